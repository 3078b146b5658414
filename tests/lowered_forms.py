"""Checks shared by the lowering tests of the expert-mixing families (CondConv, DyConv, ODConv).

Every lowered form is compared with a float64 evaluation of the original layer followed by its
BatchNorm, in PyTorch and, exported with a dynamic batch (per-sample convolutions expanded into
ONNX Loops), on ONNX Runtime at batch 1, 3 and 8. The bound is ten times the original layer's
own float32 error against the same float64 reference (never below 1e-6).
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import onnx
import onnxruntime as ort
import torch
from torch import nn

from dcd_deploy.exporting.loops import expand_per_sample_convs
from dcd_deploy.lowering import FAMILIES, LowerOptions

HW = 10


def random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm2d with non-trivial statistics, scale and shift."""
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(channels, generator=gen) * 2 - 1)
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(channels, generator=gen) * 2 - 1)
    return bn


def randomise_bns(layer: nn.Module) -> nn.Module:
    """Give the layer's own BatchNorms (ODConv's squeeze) non-trivial statistics; eval mode."""
    for i, m in enumerate(layer.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(random_bn(m.num_features, seed=100 + i).state_dict())
    return layer.eval()


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


def _reference(layer: nn.Module, bn: nn.Module | None, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
    """float64 output of layer (+ bn), and the float32 layer's own relative error against it."""
    with torch.no_grad():
        ref = copy.deepcopy(layer).double()(*(a.double() for a in args))
        out32 = layer(*args)
        if bn is not None:
            ref, out32 = copy.deepcopy(bn).double()(ref), bn(out32)
    return ref, _rel(out32, ref)


def _bound(noise: float) -> float:
    return max(10 * noise, 1e-6)


def export_lowered(lowered: nn.Module, args: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    """The lowered layer as a dynamic-batch ONNX model (inputs x, r...), Loops expanded, checked."""
    names = [f"in{i}" for i in range(len(args))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lowered, args, buffer, dynamo=False, opset_version=17, input_names=names, output_names=["y"],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "y": {0: "batch"}})
    model = expand_per_sample_convs(onnx.load_from_string(buffer.getvalue()))
    onnx.checker.check_model(model, full_check=True)
    return model


def check_forms(family: str, layer: nn.Module, make_args: Callable[[int], tuple[torch.Tensor, ...]],
                with_bn: bool = True) -> list[str]:
    """Lower ``layer`` in every form its family offers and check each (see the module docstring);
    returns the forms checked."""
    fam = FAMILIES[family]
    layer = randomise_bns(layer)
    info = fam.match(layer)
    assert info, info
    bn = random_bn(info.c_out) if with_bn else None
    args = make_args(3)
    ref, noise = _reference(layer, bn, args)
    forms = fam.forms(info, tuple(args[0].shape))
    for form in forms:
        lowered = fam.lower(layer, info, bn, LowerOptions(form, (HW, HW)))
        with torch.no_grad():
            err = _rel(lowered(*args), ref)
        assert err <= _bound(noise), f"{form}: torch relative error {err:.2e} (original float32 {noise:.2e})"
        session = ort.InferenceSession(export_lowered(lowered, args).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        for batch in (1, 3, 8):
            batch_args = make_args(batch)
            batch_ref, batch_noise = _reference(layer, bn, batch_args)
            out = session.run(None, {f"in{i}": a.numpy() for i, a in enumerate(batch_args)})[0]
            err = _rel(torch.from_numpy(out), batch_ref)
            assert err <= _bound(batch_noise), f"{form}, batch {batch}: ONNX Runtime relative error {err:.2e}"
    return forms


def image(channels: int, seed: int = 0) -> Callable[[int], tuple[torch.Tensor, ...]]:
    """make_args for a layer taking one input map."""
    return lambda n: (torch.randn(n, channels, HW, HW, generator=torch.Generator().manual_seed(seed + n)),)
