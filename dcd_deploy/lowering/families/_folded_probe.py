"""The generic family's probe: which modules run a batch-folded convolution with a computed weight.

One forward pass at batch 2 and one at batch 3 (:data:`PROBE_BATCHES`), every parameter frozen and
the input requiring a gradient, under a ``TorchFunctionMode`` that records every ``F.conv1d/2d/3d``
call with the stack of modules running (forward pre/post hooks). A call's weight requires a
gradient exactly when it is computed from the input; the call belongs to the innermost module
running it. A module's computed-weight calls are the idiom when, at both batches, each has an input
of batch 1 with ``N·C_in`` channels, ``N·g`` groups and ``N·C_out`` filters, and the per-sample
geometry (``C_in``, ``C_out``, ``g``, kernel, stride, padding, dilation) is the same at both: see
``generic.py`` for the algebra and the lowering. Anything else is a reason (:func:`_judge`).
Calls are numbered per invocation of their module, counting every convolution under it (its own
static convolutions too): the lowering counts the same way to find the calls it replaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..family import LayerInfo, Mismatch, lowered_types

NAME = "generic"
PROBE_BATCHES = (2, 3)
CONV_DIMS: dict[Callable, int] = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2,
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
        if func in CONV_DIMS and self.stack:
            a = conv_arguments(args, kwargs)
            x, w = a["input"], a["weight"]
            if isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor):
                self.run.calls.append(_Call(tuple(self.stack), CONV_DIMS[func], tuple(x.shape), tuple(w.shape),
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
    if dims not in (1, 2):
        return f"its convolution is conv{dims}d (the batch-folded idiom is lowered for conv1d and conv2d)"
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
        name = type(modules[path]).__name__
        found[path] = Mismatch(NAME, f"{name} computes a convolution from unfolded patches and an input-dependent kernel "
                                     "with einsum/matmul (a per-sample kernel applied without a convolution call), "
                                     "which dcd-deploy does not recognise; write it as one batch-folded grouped "
                                     "convolution (F.conv2d(x.reshape(1, N·C, H, W), w, groups=N·g))")
    return found


