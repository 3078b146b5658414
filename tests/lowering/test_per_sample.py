"""Per-sample convolutions (``lowering/per_sample.py``, imported here through ``dynamic_forms``, the
path other modules use): the loop-free ``per_sample_conv_unfold`` and the Loop one, against
``F.conv2d`` sample by sample, in float64 (PyTorch) and in float32 on ONNX Runtime from one
dynamic-batch file."""

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

from dcd_deploy.exporting.loops import expand_per_sample_convs
from dcd_deploy.lowering.dynamic_forms import per_sample_conv, per_sample_conv_unfold
from dcd_deploy.runtime.onnxfile import CONTROL_FLOW

# (c_in, c_out, (kh, kw), stride, padding, dilation, groups, bias)
CASES = {
    "3x3": (6, 10, (3, 3), 1, 1, 1, 1, "per_sample"),
    "groups": (6, 9, (3, 3), 1, 2, 2, 3, "shared"),  # grouped, dilated
    "depthwise_stride2": (8, 8, (5, 5), 2, 2, 1, 8, "none"),
    "depthwise_multiplier": (4, 8, (3, 3), 1, 1, 1, 4, "per_sample"),  # C_out/g = 2
    "rectangular_pairs": (5, 7, (1, 3), (2, 1), (0, 1), (1, 2), 1, "per_sample"),
    "conv1d_as_2d": (4, 6, (1, 5), 1, (0, 2), 1, 2, "shared"),
    "1x1_strided": (6, 4, (1, 1), 2, 0, 1, 1, "none"),
    "1x1_padded": (6, 4, (1, 1), 1, 1, 1, 2, "per_sample"),
}


def _sample_args(case, batch: int, dtype=torch.float64, hw=(9, 11)):
    c_in, c_out, (kh, kw), *_rest, groups, bias = case
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, c_in, *hw, generator=gen, dtype=dtype)
    w = torch.randn(batch, c_out, c_in // groups, kh, kw, generator=gen, dtype=dtype)
    b = {"none": None, "shared": torch.randn(c_out, generator=gen, dtype=dtype),
         "per_sample": torch.randn(batch, c_out, generator=gen, dtype=dtype)}[bias]
    return x, w, b


def _reference(case, x, w, b):
    stride, padding, dilation, groups = case[3:7]
    outs = []
    for n in range(x.shape[0]):
        bn = None if b is None else (b if b.dim() == 1 else b[n])
        outs.append(F.conv2d(x[n:n + 1].double(), w[n].double(), None if bn is None else bn.double(),
                             stride, padding, dilation, groups))
    return torch.cat(outs)


def _rel(out, ref) -> float:
    out = torch.as_tensor(np.asarray(out)).double()
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("conv", [per_sample_conv_unfold, per_sample_conv], ids=["unfold", "loop"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_matches_conv2d_per_sample_in_float64(conv, name, batch):
    case = CASES[name]
    x, w, b = _sample_args(case, batch)
    out = conv(x, w, b, *case[3:7])
    ref = _reference(case, x, w, b)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-12


def test_unfold_with_out_hw_and_a_kernel_shared_by_every_sample():
    case = CASES["groups"]
    x, w, b = _sample_args(case, 3)
    shared = w[:1]
    ref = _reference(case, x, shared.expand(3, -1, -1, -1, -1), b)
    out = per_sample_conv_unfold(x, shared, b, *case[3:7], out_hw=tuple(ref.shape[2:]))
    assert _rel(out, ref) < 1e-12


class _PerSample(nn.Module):
    """Weights and bias computed from the input, so every sample has its own."""

    def __init__(self, case, conv, out_hw=None):
        super().__init__()
        c_in, c_out, (kh, kw), *_rest, groups, bias = case
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in // groups, kh, kw, generator=gen))
        self.bias = nn.Parameter(torch.randn(c_out, generator=gen))
        self.case, self.conv, self.out_hw = case, conv, out_hw

    def parts(self, x):
        s = 1 + x.mean((1, 2, 3)).view(-1, 1, 1, 1, 1)
        w = self.weight.unsqueeze(0) * s
        b = {"none": None, "shared": self.bias, "per_sample": self.bias * s.view(-1, 1)}[self.case[-1]]
        return w, b

    def forward(self, x):
        w, b = self.parts(x)
        extra = {"out_hw": self.out_hw} if self.out_hw else {}
        return self.conv(x, w, b, *self.case[3:7], **extra)


def _export(module: nn.Module, c_in: int, hw=(9, 11), dynamic_size=False) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"} if dynamic_size else {0: "n"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, c_in, *hw),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": axes, "y": {0: "n"}})
    return expand_per_sample_convs(onnx.load_from_string(buffer.getvalue()))


def _all_ops(graph: onnx.GraphProto) -> list[str]:
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                ops += _all_ops(sub)
    return ops


def _float64_reference(module: _PerSample, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        w, b = module.parts(x.double())
        return _reference(module.case, x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("with_out_hw", [False, True], ids=["any_size", "out_hw"])
def test_unfold_exports_without_control_flow_and_runs_at_batch_1_and_3(name, with_out_hw):
    case = CASES[name]
    out_hw = None
    if with_out_hw:
        x, w, b = _sample_args(case, 1)
        out_hw = tuple(_reference(case, x, w, b).shape[2:])
    module = _PerSample(case, per_sample_conv_unfold, out_hw).eval()
    model = _export(module, case[0])
    onnx.checker.check_model(model, full_check=True)
    ops = _all_ops(model.graph)
    assert not set(CONTROL_FLOW) & set(ops), ops
    if with_out_hw:  # every Reshape has a constant shape: no Shape read at run time
        assert "Shape" not in ops, ops
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, case[0], 9, 11, generator=torch.Generator().manual_seed(10 + batch))
        out = session.run(None, {"x": x.numpy()})[0]
        assert _rel(out, _float64_reference(module, x)) < 1e-5


def test_unfold_without_out_hw_follows_any_input_size():
    case = CASES["groups"]
    module = _PerSample(case, per_sample_conv_unfold).eval()
    model = _export(module, case[0], dynamic_size=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, hw in ((1, (9, 11)), (3, (7, 6))):
        x = torch.randn(batch, case[0], *hw, generator=torch.Generator().manual_seed(batch))
        assert _rel(session.run(None, {"x": x.numpy()})[0], _float64_reference(module, x)) < 1e-5


@pytest.mark.parametrize("name", ["rectangular_pairs", "conv1d_as_2d"])
def test_the_loop_pass_takes_pairs_and_rectangular_kernels(name):
    case = CASES[name]
    module = _PerSample(case, per_sample_conv).eval()
    model = _export(module, case[0])
    onnx.checker.check_model(model, full_check=True)
    assert "Loop" in _all_ops(model.graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, case[0], 9, 11, generator=torch.Generator().manual_seed(batch))
        assert _rel(session.run(None, {"x": x.numpy()})[0], _float64_reference(module, x)) < 1e-5
