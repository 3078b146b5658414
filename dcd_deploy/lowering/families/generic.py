"""The generic family: any dynamic convolution written as the batch-folded grouped convolution.

Most published dynamic convolutions (KernelWarehouse, WeightNet, CondConv, DyConv, ...) and the
variants users write end in one idiom, whatever the module computes before it::

    x = x.reshape(1, N * C_in, *spatial)                  # the batch folded into the channels
    w = <computed from the input>                         # (N * C_out, C_in / g, *k)
    y = F.conv2d(x, w, b, stride, padding, dilation, groups=N * g)
    y = y.view(N, C_out, *spatial_out)

The grouped convolution over ``N·g`` groups is, group by group, sample n's convolution with its own
kernel: channels ``[n·C_in, (n+1)·C_in)`` meet filters ``[n·C_out, (n+1)·C_out)`` only, so::

    y[0, n·C_out + o] = conv(x[0, n·C_in : (n+1)·C_in], w[n·C_out + o], b[n·C_out + o], groups=g)
                      = per_sample_conv(x.reshape(N, C_in, ...), w.reshape(N, C_out, C_in/g, ...),
                                        b.reshape(N, C_out), groups=g)[n, o]

``groups = N·g`` is an attribute of an ONNX ``Conv``: the file would hold the example's batch.
The lowering keeps the module's own code (its kernel computation is already batch-dynamic) and
replaces only that call by a form whose graph holds nothing of N:

* ``folded`` (only by name, ``--form folded``, on a dynamic batch): the call itself as one ``FoldedConv``
  node, expanded into a ladder of ``If`` on N whose branch for batch n is the grouped ``Conv`` with ``n·g`` groups (the plain
  static-batch export's own operator), and the ``loop`` form beyond the ladder (``exporting/folded.py``);
* ``unfold``: ``dynamic_forms.per_sample_conv_unfold`` (no control flow: ``--target cuda``);
* ``loop``: ``dynamic_forms.per_sample_conv``, an ONNX ``Loop`` over the samples.

conv1d is the 2-D case with height 1 (for the per-sample forms its padding is applied first with
``F.pad``, so that stride and dilation act along the length only).

Recognition is by running, not by names (:func:`probe`): one forward pass at batch 2 and one at
batch 3 with every parameter frozen and the input requiring a gradient, so a convolution's weight
requires a gradient exactly when it is computed from the input. Each convolution call is
attributed to the innermost module running it (the lowered unit). A call is the idiom when, at
both batches, its input has batch 1 and ``N·C_in`` channels, its groups are ``N·g`` and its weight
has ``N·C_out`` filters, with the same per-sample geometry. A computed weight used any other way
(a Python loop of one convolution per sample, one kernel for the whole batch, a convolution
written with unfold and einsum/matmul) is named with that reason. A batch-folded convolution whose
weight is a parameter or buffer (not computed from the input) is left alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ...errors import LoweringError
from ..dynamic_forms import CONTROL_FLOW_FORMS, per_sample_conv, per_sample_conv_unfold
from ..family import LayerFamily, LayerInfo, LowerOptions, Mismatch, register_family
from ._expert_lowering import KERNEL_COST, LOOP_FIXED, PASS_COST, form_costs
from ._folded_graph import FoldedConvFn
from ._folded_probe import CONV_DIMS, NAME, FoldedCall, GenericLayerInfo, conv_arguments, probe

FORMS = ("unfold", "loop", "folded")
# The expert families' CPU constants, with the loop's convolution at 1.0 per MAC: its Conv with a
# computed weight is the very operator the plain static-batch export runs (benchmarks/generic_idiom.py).
CPU_CONSTANTS = {"loop_conv_factor": 1.0}
__all__ = ["FORMS", "FoldedCall", "GenericFoldedConv", "GenericLayerInfo", "LoweredFoldedConv", "folded_per_sample", "probe"]


# ---------------------------------------------------------------------------------------------- lowering


def folded_per_sample(call: FoldedCall, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      form: str, static_size: bool = False) -> torch.Tensor:
    """The batch-folded call computed per sample: ``x`` (1, N·C_in, *spatial), ``weight`` (N·C_out,
    C_in/g, *k), ``bias`` (N·C_out,) or None; returns (1, N·C_out, *spatial_out) like the call.

    ``form``: ``folded`` (the call itself, see ``exporting/folded.py``), ``loop`` (:func:`per_sample_conv`,
    an ONNX Loop) or ``unfold`` (:func:`per_sample_conv_unfold`, no control flow). ``static_size``: the input size is fixed, so
    the output size may be a constant of the graph."""
    if form == "folded":
        return _folded(call, x, weight, bias)
    if call.dims == 1:  # height 1: the padding first, so stride and dilation act along the length only
        x = F.pad(x, call.padding) if any(call.padding) else x
        xs = x.reshape(-1, call.c_in, 1, x.shape[-1])
        ws = weight.reshape(-1, call.c_out, call.c_in // call.groups, 1, call.kernel[0])
        stride, padding, dilation = (1, call.stride[0]), (0, 0), (1, call.dilation[0])
    else:
        h0, h1, w0, w1 = call.padding
        symmetric = h0 == h1 and w0 == w1
        if not symmetric:
            x = F.pad(x, (w0, w1, h0, h1))
        xs = x.reshape(-1, call.c_in, x.shape[-2], x.shape[-1])
        ws = weight.reshape(-1, call.c_out, call.c_in // call.groups, *call.kernel)
        stride, padding, dilation = tuple(call.stride), (h0, w0) if symmetric else (0, 0), tuple(call.dilation)
    bs = None if bias is None else bias.reshape(-1, call.c_out)
    if form == "unfold":
        out_hw = None
        if static_size:
            kh, kw = ws.shape[-2], ws.shape[-1]
            out_hw = tuple(int((int(n) + 2 * p - d * (k - 1) - 1) // s + 1)
                           for n, p, d, k, s in zip(xs.shape[-2:], padding, dilation, (kh, kw), stride))
        out = per_sample_conv_unfold(xs, ws, bs, stride, padding, dilation, call.groups, out_hw=out_hw)
    else:
        out = per_sample_conv(xs, ws, bs, stride, padding, dilation, call.groups)
    if call.dims == 1:
        return out.reshape(1, -1, out.shape[-1])
    return out.reshape(1, -1, out.shape[-2], out.shape[-1])


def _folded(call: FoldedCall, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The call itself, exported as one ``FoldedConv`` node (a batch ladder of Ifs, see ``exporting/folded.py``)."""
    if call.dims == 1:
        out = FoldedConvFn.apply(x.unsqueeze(2), weight.unsqueeze(2), bias, call.c_in, call.c_out, call.groups,
                                 (1, call.kernel[0]), (1, call.stride[0]), (0, call.padding[0], 0, call.padding[1]),
                                 (1, call.dilation[0]))
        return out.squeeze(2)
    h0, h1, w0, w1 = call.padding
    return FoldedConvFn.apply(x, weight, bias, call.c_in, call.c_out, call.groups, tuple(call.kernel),
                              tuple(call.stride), (h0, w0, h1, w1), tuple(call.dilation))


class _Intercept(TorchFunctionMode):
    """Counts the convolution calls under one module's forward and computes the folded ones per sample."""

    def __init__(self, lowered: LoweredFoldedConv):
        super().__init__()
        self.lowered, self.count = lowered, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in CONV_DIMS:
            return func(*args, **kwargs)
        ordinal, self.count = self.count, self.count + 1
        call = self.lowered.folded.get(ordinal)
        if call is None:
            return func(*args, **kwargs)
        a = conv_arguments(args, kwargs)
        return folded_per_sample(call, a["input"], a["weight"], a["bias"], self.lowered.form, self.lowered.static_size)


class LoweredFoldedConv(nn.Module):
    """A module whose batch-folded convolution(s) run per sample; everything else is its own code.

    ``forward`` runs the original module's forward (its kernel computation untouched) with the
    recorded folded calls replaced by :func:`folded_per_sample`.
    """

    def __init__(self, module: nn.Module, calls: tuple[tuple[int, FoldedCall], ...], form: str,
                 static_size: bool = False):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r} of the generic family; expected one of {FORMS}")
        self.module = module
        self.folded = dict(calls)
        self.form = form
        self.static_size = static_size

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with _Intercept(self):
            return self.module(*args, **kwargs)


class StaticTwinConv(nn.Module):
    """The static twin of a generic layer: one plain convolution of the call's per-sample shape; any
    argument after the input (a routing computed outside the layer) is taken and ignored."""

    def __init__(self, call: FoldedCall):
        super().__init__()
        self.conv = (nn.Conv1d if call.dims == 1 else nn.Conv2d)(
            call.c_in, call.c_out, call.kernel, call.stride, call.padding[::2], call.dilation, call.groups,
            bias=call.bias)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, *_ignored: Any, **_also_ignored: Any) -> torch.Tensor:
        return self.conv(x)


def pick_fixed(constants: dict[str, float]) -> float:
    """The loop form's fixed cost per sample (its Loop iteration), as ``form_costs`` took it."""
    return constants.get("loop_fixed", LOOP_FIXED)


class ExtraArguments(nn.Module):
    """Stand-ins for a layer's arguments after the input, for timing it alone (``--tune``): tensors of
    the shapes the probe saw, at the input's batch (their values do not change the timing)."""

    def __init__(self, shapes: tuple[tuple[int, ...], ...]):
        super().__init__()
        self.shapes = shapes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.full([x.shape[0] if d == -1 else d for d in shape], 0.5) for shape in self.shapes)


@register_family
class GenericFoldedConv(LayerFamily):
    """The batch-folded grouped convolution, whatever module computes its weight (see the module docstring)."""

    name = NAME
    paper = "generic"
    title = "batch-folded dynamic convolution"
    lowered_types = (LoweredFoldedConv,)
    probes = True
    trace_batch = 2  # the module's own code runs in the graph: never trace a batch-1 branch of it
    control_flow_forms = CONTROL_FLOW_FORMS | {"folded"}
    # The If ladder branches on the batch: never the portable graph's choice (and OpenVINO 2026.4 computes
    # it wrongly on the first run of each batch size); only --form folded takes it.
    batch_specific_forms = frozenset({"folded"})

    def looks_dynamic(self, module: nn.Module) -> bool:
        return False  # recognised by running the network (probe), never by structure

    def match(self, module: nn.Module) -> LayerInfo | Mismatch:
        return Mismatch(self.name, "the generic family recognises layers by running the network, not by structure")

    def probe(self, model: nn.Module, example: torch.Tensor) -> dict[str, LayerInfo | Mismatch]:
        return probe(model, example)

    def forms(self, info: LayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        # A fixed-batch file has no use for a ladder over batches (and ONNX Runtime 1.32 crashes running
        # the ladder with a static batch): the per-sample forms only.
        return [f for f in FORMS if not (static_batch and f in self.batch_specific_forms)]

    def costs(self, info: LayerInfo, in_shape: tuple[int, ...], target: str, static_batch: int | None = None,
              **constants: float) -> dict[str, float]:
        """The expert families' cost model (``_expert_lowering.form_costs``) for the per-sample
        convolution of the call's geometry, at the size the call sees, with the generic family's CPU
        constants (:data:`CPU_CONSTANTS`, overridable) and, for the loop form, the copies its body makes:
        the layer's kernel is computed by the module's own code as a batch of kernels, which the Loop
        gathers sample by sample (``KERNEL_COST`` per element), with the sample's input and output
        maps (``PASS_COST`` per element). The kernel's computation is the same for every form."""
        call = info.calls[0][1]
        conv_info = dataclasses.replace(info, experts=None)
        hw = info.conv_hw or tuple(in_shape[2:])
        if len(hw) == 1:  # conv1d: a map of height k (its output height is about 1)
            hw = (call.kernel[0], hw[0])
        costs = form_costs(conv_info, (1, call.c_in, *hw[:2]), target, **{**CPU_CONSTANTS, **constants})
        # folded: the user's own convolution at every batch up to the ladder's top (its Ifs cost ~nothing)
        costs["folded"] = costs["loop"] - pick_fixed(constants)
        if target != "cuda":
            kernel = call.c_out * call.c_in // call.groups * math.prod(call.kernel)
            out = math.prod((n + 2 * info.padding - info.dilation * (info.kernel - 1) - 1) // info.stride + 1 for n in hw)
            costs["loop"] += KERNEL_COST * kernel + PASS_COST * (call.c_in * math.prod(hw) + call.c_out * out)
        forms = [f for f in self.forms(info, in_shape, static_batch) if target != "cuda" or f not in self.control_flow_forms]
        return {f: costs[f] for f in forms}

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None,
              options: LowerOptions) -> nn.Module:
        assert isinstance(info, GenericLayerInfo)
        return LoweredFoldedConv(module, info.calls, options.form, options.in_hw is not None).eval()

    def extra_inputs(self, info: LayerInfo) -> nn.Module | None:
        assert isinstance(info, GenericLayerInfo)
        if not info.extra_args:
            return None
        if any(shape is None for shape in info.extra_args):
            raise LoweringError(f"--tune cannot time {info.summary()} alone: it takes an argument that is not a tensor.",
                                "Export without --tune (the cost model chooses).")
        return ExtraArguments(info.extra_args)

    def static_part(self, module: nn.Module, info: LayerInfo) -> nn.Module:
        assert isinstance(info, GenericLayerInfo)
        if info.static_twin is not None:
            raise LoweringError(f"The {info.kind} layer has no static twin: {info.static_twin}.",
                                "Benchmark without the static row; the other rows are unaffected.")
        return StaticTwinConv(info.calls[0][1])
