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
replaces only that call by a per-sample form whose graph holds nothing of N: the ONNX ``Loop``
over the batch (``dynamic_forms.per_sample_conv``). conv1d is the 2-D case with height 1 (its
padding applied first with ``F.pad``, so that stride and dilation act along the length only).

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
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ...errors import LoweringError
from ..dynamic_forms import CONTROL_FLOW_FORMS, per_sample_conv, per_sample_conv_unfold
from ..family import LayerFamily, LayerInfo, LowerOptions, Mismatch, lowered_types, register_family
from ._expert_lowering import form_costs

NAME = "generic"
FORMS = ("unfold", "loop")
PROBE_BATCHES = (2, 3)
_CONV_DIMS: dict[Callable, int] = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2,
                                   torch.conv3d: 3}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_PRODUCTS = {torch.einsum, torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm, torch.Tensor.__matmul__}
_UNFOLDS = {F.unfold, torch.Tensor.unfold}


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    return value * dims if len(value) == 1 else value


def conv_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of one ``F.convNd`` call by name, with the defaults filled in."""
    bound = dict(zip(_CONV_ARGS, args))
    bound.update(kwargs)
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    return {**defaults, **bound}


@dataclasses.dataclass(frozen=True)
class FoldedCall:
    """The per-sample geometry of one batch-folded convolution call (the same at every batch)."""

    dims: int  # 1, 2 (conv1d, conv2d)
    c_in: int
    c_out: int
    groups: int  # g, per sample
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]  # (begin, end) per spatial axis, flattened: (h0, h1, w0, w1)
    dilation: tuple[int, ...]
    bias: bool  # a bias passed to the call


@dataclasses.dataclass(kw_only=True)
class GenericLayerInfo(LayerInfo):
    """A module whose convolution(s) are the batch-folded idiom, as the probe run revealed them."""

    dims: int
    dilation: int
    calls: tuple[tuple[int, FoldedCall], ...]  # (ordinal among the module's convolution calls, geometry)
    static_twin: str | None = None  # why the module has no static twin (None: it has one)
    conv_hw: tuple[int, ...] = ()  # the first folded call's input size at the probed input size
    # shapes of the arguments after the input (a routing computed outside the layer), batch as -1;
    # None for an argument that is not a tensor
    extra_args: tuple[tuple[int, ...] | None, ...] = ()

    def geometry(self) -> str:
        k = self.calls[0][1].kernel
        return "×".join(map(str, k)) + f"/{self.stride}" + (f" d{self.dilation}" if self.dilation > 1 else "")

    def summary(self) -> str:
        extra = f", {len(self.calls)} folded convolutions" if len(self.calls) > 1 else ""
        return f"{self.kind} conv{self.dims}d {self.c_in}→{self.c_out} {self.geometry()} g{self.groups}{extra}"


# ---------------------------------------------------------------------------------------------- probe


@dataclasses.dataclass
class _Call:
    """One convolution call seen by the probe."""

    stack: tuple[tuple[str, int], ...]  # (module path, invocation number) outermost first
    dims: int
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    computed: bool  # the weight depends on the input
    args: dict[str, Any]


@dataclasses.dataclass
class _Run:
    """What one probe pass saw."""

    batch: int
    calls: list[_Call] = dataclasses.field(default_factory=list)
    invocations: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> how many times it ran
    io: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = dataclasses.field(default_factory=dict)
    extra: dict[str, tuple[tuple[int, ...] | None, ...]] = dataclasses.field(default_factory=dict)  # shapes of args[1:]
    unfolds: set[str] = dataclasses.field(default_factory=set)  # paths that unfold an input-dependent tensor
    products: set[str] = dataclasses.field(default_factory=set)  # paths multiplying two input-dependent tensors


class _Recorder(TorchFunctionMode):
    def __init__(self, run: _Run, stack: list[tuple[str, int]]):
        super().__init__()
        self.run, self.stack = run, stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV_DIMS and self.stack:
            a = conv_arguments(args, kwargs)
            x, w = a["input"], a["weight"]
            if isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor):
                self.run.calls.append(_Call(tuple(self.stack), _CONV_DIMS[func], tuple(x.shape), tuple(w.shape),
                                            bool(w.requires_grad), {k: v for k, v in a.items()
                                                                    if k not in ("input", "weight")}))
        elif func in _UNFOLDS and self.stack and args and getattr(args[0], "requires_grad", False):
            self.run.unfolds.add(self.stack[-1][0])
        elif func in _PRODUCTS and self.stack:
            tensors = [a for a in (args[1:] if func is torch.einsum else args) if isinstance(a, torch.Tensor)]
            if func is torch.einsum and len(args) == 2 and isinstance(args[1], (list, tuple)):
                tensors = [t for t in args[1] if isinstance(t, torch.Tensor)]
            if sum(t.requires_grad for t in tensors) >= 2:
                self.run.products.add(self.stack[-1][0])
        return func(*args, **kwargs)


def _run_probe(model: nn.Module, example: torch.Tensor, batch: int) -> _Run:
    run = _Run(batch)
    stack: list[tuple[str, int]] = []
    handles = []
    skip = lowered_types()
    for path, module in model.named_modules():
        def enter(m, args, path=path):
            n = run.invocations.get(path, 0)
            run.invocations[path] = n + 1
            stack.append((path, n))
            if n == 0:
                first = args[0] if args and isinstance(args[0], torch.Tensor) else None
                run.io[path] = (tuple(first.shape) if first is not None else None, None)
                run.extra[path] = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args[1:])

        def leave(m, args, out, path=path):
            stack.pop()
            shape_in, shape_out = run.io.get(path, (None, None))
            if shape_out is None and isinstance(out, torch.Tensor):
                run.io[path] = (shape_in, tuple(out.shape))

        if not isinstance(module, skip):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    params = [(p, p.requires_grad) for p in model.parameters()]
    shape = (batch, *example.shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7 + batch), dtype=example.dtype)
    try:
        for p, _ in params:
            p.requires_grad_(False)
        x = x.requires_grad_(True) * 1.0  # not a leaf: in-place ops on the input stay allowed
        with torch.enable_grad(), _Recorder(run, stack):
            model(x)
    finally:
        for h in handles:
            h.remove()
        for p, flag in params:
            p.requires_grad_(flag)
    return run


def _per_sample(call: _Call, batch: int) -> FoldedCall | str:
    """The per-sample geometry of a computed-weight call, or why it is not the batch-folded idiom."""
    a, dims = call.args, call.dims
    groups = int(a["groups"])
    if call.x_shape[0] == batch:
        return ("it convolves the whole batch with one kernel computed from the input (the kernel mixes the samples), "
                "so no per-sample lowering computes the same thing")
    if call.x_shape[0] != 1:
        return f"its convolution input has batch {call.x_shape[0]} at batch {batch}"
    if call.x_shape[1] % batch or groups % batch or call.w_shape[0] % batch:
        return (f"it folds the batch into the channels but its convolution has groups={groups} and "
                f"{call.w_shape[0]} filters at batch {batch}, not N·g groups and N·C_out filters")
    c_in, g, c_out = call.x_shape[1] // batch, groups // batch, call.w_shape[0] // batch
    if call.w_shape[1] * g != c_in or c_out % g:
        return f"its weight {list(call.w_shape)} does not fit {c_in} input channels per sample in {g} groups"
    kernel = tuple(call.w_shape[2:])
    stride, dilation = _tuple(a["stride"], dims), _tuple(a["dilation"], dims)
    padding = a["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * (2 * dims)
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            padding = tuple(v for t in total for v in (t // 2, t - t // 2))
        else:
            return f"its convolution has padding={padding!r}"
    else:
        padding = tuple(v for p in _tuple(padding, dims) for v in (p, p))
    bias = a["bias"]
    if isinstance(bias, torch.Tensor) and bias.shape[0] != batch * c_out:
        return f"its bias has {bias.shape[0]} values, not N·C_out = {batch * c_out}"
    return FoldedCall(dims, c_in, c_out, g, kernel, stride, padding, dilation, isinstance(bias, torch.Tensor))


def _owner_calls(run: _Run) -> dict[str, list[tuple[int, int, _Call]]]:
    """Module path -> (invocation, ordinal among the convolutions under that invocation, call) of each
    computed-weight convolution it runs itself (it is the innermost module)."""
    ordinals: dict[tuple[str, int], int] = {}
    owned: dict[str, list[tuple[int, int, _Call]]] = {}
    for call in run.calls:
        path, inv = call.stack[-1]
        ordinal = ordinals.get((path, inv), 0)
        for frame in call.stack:
            ordinals[frame] = ordinals.get(frame, 0) + 1
        if call.computed:
            owned.setdefault(path, []).append((inv, ordinal, call))
    return owned


def _judge(path: str, runs: list[_Run]) -> tuple[tuple[tuple[int, FoldedCall], ...], list[str]] | str:
    """The folded calls of one module (ordinal, geometry), or why its computed weights are not the idiom."""
    per_batch = []
    for run in runs:
        owned = [(inv, ordinal, call) for inv, ordinal, call in _owner_calls(run).get(path, [])]
        per_batch.append(owned)
    counts = [len(o) for o in per_batch]
    invocations = [max(1, run.invocations.get(path, 1)) for run in runs]
    per_inv = [c / i for c, i in zip(counts, invocations)]
    b0, b1 = runs[0].batch, runs[1].batch
    if per_inv[0] != per_inv[1]:
        if per_inv[0] * b1 == per_inv[1] * b0:
            return (f"it runs one convolution per sample ({counts[0]} calls at batch {b0}, {counts[1]} at batch {b1}: "
                    "a Python loop over the batch), which an ONNX graph with a dynamic batch cannot hold; "
                    "write it as one batch-folded grouped convolution")
        return (f"the number of its convolutions with a computed weight changes with the batch "
                f"({counts[0]} at batch {b0}, {counts[1]} at batch {b1})")
    geometry: dict[int, FoldedCall] = {}
    for run, owned in zip(runs, per_batch):
        for inv, ordinal, call in owned:
            g = _per_sample(call, run.batch)
            if isinstance(g, str):
                return g
            if geometry.setdefault(ordinal, g) != g:
                return (f"its convolution number {ordinal + 1} has another per-sample geometry at batch {run.batch} "
                        f"({g}) than before ({geometry[ordinal]})")
    return tuple(sorted(geometry.items())), []


def _twin_reason(path: str, calls: tuple[tuple[int, FoldedCall], ...], runs: list[_Run]) -> str | None:
    """Why the module cannot be replaced by one static convolution of the call's shape (None: it can)."""
    if len(calls) != 1:
        return f"it runs {len(calls)} batch-folded convolutions, so no single convolution stands for it"
    c = calls[0][1]
    run = runs[0]
    shape_in, shape_out = run.io.get(path, (None, None))
    if shape_in is None or shape_out is None:
        return "its input or output is not a single tensor"
    if shape_in[:2] != (run.batch, c.c_in) or len(shape_in) != c.dims + 2:
        return f"its input {list(shape_in)} is not the convolution's per-sample input (N, {c.c_in}, ...)"
    if shape_out[:2] != (run.batch, c.c_out) or len(shape_out) != c.dims + 2:
        return f"its output {list(shape_out)} is not the convolution's per-sample output (N, {c.c_out}, ...)"
    if any(b != e for b, e in zip(c.padding[::2], c.padding[1::2])):
        return "its padding is not symmetric"
    sizes = [(n + p0 + p1 - d * (k - 1) - 1) // s + 1
             for n, p0, p1, d, k, s in zip(shape_in[2:], c.padding[::2], c.padding[1::2], c.dilation, c.kernel, c.stride)]
    if tuple(sizes) != tuple(shape_out[2:]):
        return "its output size is not the convolution's"
    return None


def _conv_hw(path: str, ordinal: int, run: _Run) -> tuple[int, ...]:
    owned = [call for _, o, call in _owner_calls(run).get(path, []) if o == ordinal]
    return tuple(owned[0].x_shape[2:]) if owned else ()


def probe(model: nn.Module, example: torch.Tensor) -> dict[str, GenericLayerInfo | Mismatch]:
    """Module path -> match of every module that runs a convolution with a computed weight itself.

    ``example`` gives the input's shape (its batch is ignored: the probe runs at batches 2 and 3).
    A network the probe cannot run (in-place ops on a leaf, a batch-size assertion) gives ``{}``.
    """
    training = model.training
    model.eval()
    try:
        runs = [_run_probe(model, example, b) for b in PROBE_BATCHES]
    except Exception:  # noqa: BLE001 - a best-effort probe; the exporter reports what it cannot do
        return {}
    finally:
        model.train(training)
    modules = dict(model.named_modules())
    owners = set(_owner_calls(runs[0])) | set(_owner_calls(runs[1]))
    found: dict[str, GenericLayerInfo | Mismatch] = {}
    for path in sorted(owners, key=list(modules).index):
        judged = _judge(path, runs)
        if isinstance(judged, str):
            found[path] = Mismatch(NAME, f"{type(modules[path]).__name__} computes its convolution weight from the "
                                         f"input, but {judged}")
            continue
        calls, _ = judged
        first = calls[0][1]
        found[path] = GenericLayerInfo(
            family=NAME, kind=type(modules[path]).__name__, c_in=first.c_in, c_out=first.c_out,
            kernel=first.kernel[0], stride=first.stride[0], padding=first.padding[0], groups=first.groups,
            attentions=(), dims=first.dims, dilation=first.dilation[0], calls=calls,
            static_twin=_twin_reason(path, calls, runs), conv_hw=_conv_hw(path, calls[0][0], runs[0]),
            extra_args=tuple(None if shape is None else (-1, *shape[1:]) if shape and shape[0] == runs[0].batch else shape
                             for shape in runs[0].extra.get(path, ())))
    convs_seen = {call.stack[-1][0] for run in runs for call in run.calls}
    for path in sorted((runs[0].unfolds & runs[0].products) - owners - convs_seen, key=list(modules).index):
        found[path] = Mismatch(NAME, f"{type(modules[path]).__name__} computes a convolution from unfolded patches and an input-dependent kernel "
                                     "with einsum/matmul (a per-sample kernel applied without a convolution call), "
                                     "which dcd-deploy does not recognise; write it as one batch-folded grouped "
                                     "convolution (F.conv2d(x.reshape(1, N·C, H, W), w, groups=N·g))")
    return found


# ---------------------------------------------------------------------------------------------- lowering


def folded_per_sample(call: FoldedCall, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      form: str, static_size: bool = False) -> torch.Tensor:
    """The batch-folded call computed per sample: ``x`` (1, N·C_in, *spatial), ``weight`` (N·C_out,
    C_in/g, *k), ``bias`` (N·C_out,) or None; returns (1, N·C_out, *spatial_out) like the call.

    ``form``: ``loop`` (:func:`per_sample_conv`, an ONNX Loop) or ``unfold``
    (:func:`per_sample_conv_unfold`, no control flow). ``static_size``: the input size is fixed, so
    the output size may be a constant of the graph."""
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


class _Intercept(TorchFunctionMode):
    """Counts the convolution calls under one module's forward and computes the folded ones per sample."""

    def __init__(self, lowered: LoweredFoldedConv):
        super().__init__()
        self.lowered, self.count = lowered, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _CONV_DIMS:
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
    control_flow_forms = CONTROL_FLOW_FORMS

    def looks_dynamic(self, module: nn.Module) -> bool:
        return False  # recognised by running the network (probe), never by structure

    def match(self, module: nn.Module) -> LayerInfo | Mismatch:
        return Mismatch(self.name, "the generic family recognises layers by running the network, not by structure")

    def probe(self, model: nn.Module, example: torch.Tensor) -> dict[str, LayerInfo | Mismatch]:
        return probe(model, example)

    def forms(self, info: LayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        return list(FORMS)

    def costs(self, info: LayerInfo, in_shape: tuple[int, ...], target: str, **constants: float) -> dict[str, float]:
        """The expert families' cost model (``_expert_lowering.form_costs``) for the per-sample
        convolution of the call's geometry, at the size the call sees (its kernel is computed by the
        module's own code, the same for every form)."""
        call = info.calls[0][1]
        conv_info = dataclasses.replace(info, experts=None)
        hw = info.conv_hw or tuple(in_shape[2:])
        if len(hw) == 1:  # conv1d: a map of height k (its output height is about 1)
            hw = (call.kernel[0], hw[0])
        costs = form_costs(conv_info, (1, call.c_in, *hw[:2]), target, **constants)
        forms = [f for f in FORMS if target != "cuda" or f not in self.control_flow_forms]
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
