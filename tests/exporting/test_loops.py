"""Per-sample convolutions: the custom export node, its expansion into a standard ONNX Loop, runtimes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dcd_deploy.exporting.graphcheck import conv_weights_are_constant
from dcd_deploy.exporting.loops import count_loops, expand_per_sample_convs
from dcd_deploy.lowering.dynamic_forms import PER_SAMPLE_DOMAIN, per_sample_conv


class PerSample(nn.Module):
    """Weights computed from the input: w_n = W · (1 + mean(x_n)), so every sample has its own kernel."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, dilation: int, groups: int,
                 bias: str):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in // groups, k, k, generator=gen))
        self.bias = nn.Parameter(torch.randn(c_out, generator=gen))
        self.geometry = (stride, padding, dilation, groups)
        self.bias_kind = bias

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return 1 + x.mean((1, 2, 3)).view(-1, 1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.unsqueeze(0) * self.scale(x)
        bias = {"none": None, "shared": self.bias, "per_sample": self.bias * self.scale(x).view(-1, 1)}[self.bias_kind]
        return per_sample_conv(x, w, bias, *self.geometry)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Sample by sample in float64."""
        outs = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1].double()
            s = float(self.scale(xi))
            bias = {"none": None, "shared": self.bias.double(), "per_sample": self.bias.double() * s}[self.bias_kind]
            outs.append(F.conv2d(xi, self.weight.double() * s, bias, *self.geometry))
        return torch.cat(outs)


def _export(module: nn.Module, c_in: int, opset: int = 17) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, c_in, 9, 9),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


def _rel(out: np.ndarray, ref: torch.Tensor) -> float:
    return float((torch.from_numpy(out).double() - ref).abs().max() / ref.abs().max())


CASES = [
    (8, 12, 3, 1, 1, 1, 1, "per_sample"),
    (8, 8, 5, 2, 2, 1, 8, "none"),  # depthwise, strided
    (6, 9, 3, 1, 2, 2, 3, "shared"),  # grouped, dilated, one bias for every sample
]


@pytest.mark.parametrize("case", CASES)
def test_expanded_loop_is_standard_onnx_and_exact_at_every_batch(case):
    module = PerSample(*case).eval()
    raw = _export(module, case[0])
    assert [n.op_type for n in raw.graph.node if n.domain == PER_SAMPLE_DOMAIN] == ["PerSampleConv"]
    model = expand_per_sample_convs(raw)
    onnx.checker.check_model(model, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert PER_SAMPLE_DOMAIN not in {o.domain for o in model.opset_import}
    assert count_loops(model) == 1 and conv_weights_are_constant(model) == []
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        x = torch.randn(batch, case[0], 9, 9, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref, eager = module.reference(x), module(x)
        assert _rel(eager.numpy(), ref) < 1e-5
        assert _rel(session.run(None, {"x": x.numpy()})[0], ref) < 1e-5


def test_a_model_without_per_sample_convs_is_returned_as_is():
    model = _export(nn.Conv2d(3, 4, 3), 3)
    assert expand_per_sample_convs(model) is model


def test_opsets_before_13_are_refused():
    model = _export(PerSample(*CASES[0]).eval(), 8, opset=11)
    with pytest.raises(ValueError, match="opset 13"):
        expand_per_sample_convs(model)


def test_openvino_runs_the_expanded_loop():
    ov = pytest.importorskip("openvino")
    module = PerSample(*CASES[1]).eval()
    model = expand_per_sample_convs(_export(module, 8))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 3):
        x = torch.randn(batch, 8, 9, 9)
        out = compiled(x.numpy())[compiled.output(0)]
        with torch.no_grad():
            assert _rel(np.asarray(out), module.reference(x)) < 1e-5
