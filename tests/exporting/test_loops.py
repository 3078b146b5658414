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


class ExpertMix(nn.Module):
    """A pure mix of experts: w_n = Σ_k r_nk W_k with r = softmax(Linear(mean(x)))."""

    def __init__(self, c_in: int = 6, c_out: int = 5, k: int = 3, experts: int = 4):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.route = nn.Linear(c_in, experts)
        self.bank = nn.Parameter(torch.randn(experts, c_out * c_in * k * k, generator=gen))
        self.shape = (c_out, c_in, k, k)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.route(x.mean((2, 3))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.matmul(self.routing(x), self.bank).view(-1, *self.shape)
        return per_sample_conv(x, w, None, 1, 1, 1, 1)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        r = self.routing(x.double().float()).double()
        w = (r @ self.bank.double()).view(-1, *self.shape)
        return torch.cat([F.conv2d(x[i:i + 1].double(), w[i], None, 1, 1) for i in range(x.shape[0])])


def test_a_pure_expert_mix_forms_each_kernel_inside_the_loop():
    """No batch of kernels is written and gathered: the body mixes sample i's kernel itself, and the
    MatMul that formed the batch of kernels is gone from the outer graph."""
    module = ExpertMix().eval()
    model = expand_per_sample_convs(_export(module, 6))
    onnx.checker.check_model(model, full_check=True)
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    body_ops = [n.op_type for n in loop.attribute[0].g.node]
    assert "MatMul" in body_ops and "Reshape" in body_ops
    assert not [n for n in model.graph.node if n.op_type == "MatMul"]  # the batched mix was pruned
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        x = torch.randn(batch, 6, 9, 9, generator=torch.Generator().manual_seed(batch))
        out = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            assert _rel(out, module.reference(x)) < 1e-5


def test_the_loop_form_has_no_batch_frozen_expand(tmp_path):
    """A kernel shared by every sample is expanded by a rule decided from the layer, not by a shape test
    that the exporter would freeze at the example's batch size."""
    from dcd_deploy import export
    from sample_models import dynamic_nets as dn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), dn.Dynamic_conv2d(8, 8, 3, padding=1, K=4, bias=False),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    result = export(net, tmp_path / "dy.onnx", input_size=16, form="loop")
    assert result and not [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "Expand"]
