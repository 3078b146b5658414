"""What a loaded checkpoint holds: network, options, size, cost and every DCD layer.

:func:`inspect_model` takes a :class:`~dcd_deploy.loading.LoadedModel` and returns an
:class:`Inspection`, one object that feeds the terminal (:meth:`Inspection.render`), the JSON
output (:meth:`Inspection.to_dict`) and tests.

Cost is counted with ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass at batch
1 (multiply-accumulates = counted FLOPs / 2; convolutions, Linear layers and matrix products are
counted, elementwise work is not). The pass runs on the ``meta`` device (shapes only, no
arithmetic), and on the CPU when a network cannot run on ``meta``. ``static_macs`` is the cost of
the network's static twin: every recognised DCD layer reduced to its static kernel ``W0`` (the
``conv`` of a DCD convolution, the ``cls`` Linear of a DCD head).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .errors import InputError, LoweringError, summarize_exception
from .load.model import LoadedModel
from .lowering import FAMILIES, DcdLayerInfo, LayerInfo, find_dynamic_layers
from .lowering.computed_weights import computed_weight_modules
from .reporting import table
from .runtime.inputs import check_input_memory


@dataclasses.dataclass
class DcdLayer:
    """One recognised DCD layer."""

    path: str
    kind: str  # conv_dy | conv_basic_dy | DYModule | DYCls
    family: str  # dcd_conv | dcd_head
    c_in: int
    c_out: int
    kernel: int | None  # None for the head (a Linear layer)
    stride: int | None
    padding: int | None
    latent: int
    squeeze: int
    pool: int | None  # attention pool output size (1 or 2); None for the head
    macs: int | None  # MACs of the whole layer at the inspected input size
    static_macs: int | None  # MACs of its static kernel alone

    @classmethod
    def from_info(cls, path: str, info: DcdLayerInfo, macs: int | None, static_macs: int | None) -> DcdLayer:
        conv = info.spatial
        return cls(
            path, info.kind, info.family, info.c_in, info.c_out,
            info.kernel if conv else None, info.stride if conv else None, info.padding if conv else None,
            info.latent, info.squeeze, info.pool, macs, static_macs,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class UnmatchedLayer:
    """A module that looks dynamic but is not a DCD layer as published, and why."""

    path: str
    family: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DynamicLayer:
    """One recognised dynamic layer of any family (DCD, CondConv, DyConv, ODConv)."""

    path: str
    family: str  # the paper: dcd | condconv | dyconv | odconv
    kind: str
    c_in: int
    c_out: int
    kernel: int | None  # None for a Linear layer (the DCD head)
    stride: int | None
    groups: int
    experts: int | None  # K; None for DCD
    attentions: list[str]
    macs: int | None  # MACs of the whole layer at the inspected input size
    forms: dict[str, str] = dataclasses.field(default_factory=dict)  # target -> the form export's cost model picks

    @classmethod
    def from_info(cls, path: str, paper: str, info: LayerInfo, macs: int | None,
                  forms: dict[str, str] | None = None) -> DynamicLayer:
        return cls(path, paper, info.kind, info.c_in, info.c_out, info.kernel if info.spatial else None,
                   info.stride if info.spatial else None, info.groups, info.experts, list(info.attentions), macs,
                   dict(forms or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Inspection:
    """Everything ``dcd-deploy inspect`` reports about a loaded checkpoint."""

    arch: str
    arch_options: dict[str, Any]
    inferred: bool
    notes: list[str]
    input_shape: tuple[int, int, int, int]  # (1, C, H, W)
    params: int
    macs: int
    static_macs: int
    layers: list[DcdLayer]
    unmatched: list[UnmatchedLayer]
    checkpoint: dict[str, Any]  # path, sha256, format and the file's metadata
    dynamic: list[DynamicLayer] = dataclasses.field(default_factory=list)  # every family, DCD included

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]

    @property
    def layer_counts(self) -> dict[str, int]:
        return dict(Counter(layer.kind for layer in self.layers))

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "arch_options": dict(self.arch_options),
            "inferred": self.inferred,
            "notes": list(self.notes),
            "input_size": list(self.input_size),
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "static_macs": self.static_macs,
            "dcd_layer_counts": self.layer_counts,
            "dcd_layers": [layer.to_dict() for layer in self.layers],
            "dynamic_layers": [layer.to_dict() for layer in self.dynamic],
            "unmatched_layers": [u.to_dict() for u in self.unmatched],
            "checkpoint": dict(self.checkpoint),
        }

    def render(self) -> str:
        """A readable summary with an aligned table of the DCD layers."""
        h, w = self.input_size
        options = ", ".join(f"{k}={v}" for k, v in self.arch_options.items())
        how = "inferred from the checkpoint" if self.inferred else "as given"
        lines = [f"network      {self.arch}" + (f" ({options})" if options else "") + f", {how}"]
        lines += [f"             - {note}" for note in self.notes]
        lines.append(f"parameters   {self.params:,}")
        macs = f"MACs         {_mega(self.macs)} at {h}×{w} (batch 1)"
        if self.layers and self.static_macs:
            macs += f"; static twin {_mega(self.static_macs)}, ratio {self.macs / self.static_macs:.2f}"
        lines.append(macs)
        ck = self.checkpoint
        lines.append(f"checkpoint   {ck.get('path')}")
        lines.append(f"             format: {ck.get('format', 'unknown')}; {ck.get('tensors', '?')} tensors")
        if ck.get("sha256"):
            lines.append(f"             sha256: {ck['sha256']}")
        meta = [f"{k}={ck[k]:.6g}" if isinstance(ck[k], float) else f"{k}={ck[k]}"
                for k in ("arch", "epoch", "best_prec1", "best_acc1") if k in ck]
        if ck.get("has_optimizer_state"):
            meta.append("optimizer state included")
        if meta:
            lines.append(f"             {', '.join(meta)}")
        counts = ", ".join(f"{n} {kind}" for kind, n in self.layer_counts.items())
        lines.append(f"DCD layers   {len(self.layers)}" + (f" ({counts})" if counts else ""))
        if self.layers:
            lines.append("")
            lines.extend(_table(self.layers))
        others = [layer for layer in self.dynamic if layer.family != "dcd"]
        if others or not self.layers:
            counts = ", ".join(f"{n} {fam}" for fam, n in Counter(layer.family for layer in self.dynamic).items())
            lines.append(f"dynamic layers {len(self.dynamic)}" + (f" ({counts})" if counts else ""))
        if others:
            lines += ["", *_dynamic_table(others).splitlines()]
        if self.unmatched:
            lines.append("")
            lines.append(f"{len(self.unmatched)} module(s) look dynamic but match no supported layer as published "
                         "(they cannot be lowered):")
            lines += [f"  {u.path or '<root>'}: {u.reason}" for u in self.unmatched]
        return "\n".join(lines)


def _mega(macs: int) -> str:
    return f"{macs / 1e6:,.1f} M" if macs >= 1e6 else f"{macs / 1e3:,.1f} K"


def _table(layers: list[DcdLayer]) -> list[str]:
    header = ("#", "path", "kind", "C_in→C_out", "kernel/stride", "L", "squeeze", "pool", "MACs")
    rows = []
    for i, layer in enumerate(layers, 1):
        kernel = f"{layer.kernel}×{layer.kernel}/{layer.stride}" if layer.kernel is not None else "linear"
        pool = f"{layer.pool}×{layer.pool}" if layer.pool else "-"
        macs = _mega(layer.macs) if layer.macs is not None else "?"
        rows.append((str(i), layer.path or "<root>", layer.kind, f"{layer.c_in}→{layer.c_out}", kernel,
                     str(layer.latent), str(layer.squeeze), pool, macs))
    return table(header, rows, "rllrlrrlr", rule=False).split("\n")  # numeric columns right-aligned


def _dynamic_table(layers: list[DynamicLayer]) -> str:
    header = ("#", "path", "family", "kind", "C_in→C_out", "kernel/stride", "groups", "K", "attentions", "MACs",
              "form cpu/cuda")
    rows = [(str(i), layer.path or "<root>", layer.family, layer.kind, f"{layer.c_in}→{layer.c_out}",
             f"{layer.kernel}×{layer.kernel}/{layer.stride}" if layer.kernel is not None else "linear",
             str(layer.groups), str(layer.experts or "-"), ",".join(layer.attentions) or "-",
             _mega(layer.macs) if layer.macs is not None else "?",
             "/".join(layer.forms.get(t, "?") for t in ("cpu", "cuda")))
            for i, layer in enumerate(layers, 1)]
    return table(header, rows, "rlllrlrrlrl")


def _auto_forms(model: nn.Module, found: list, input_shape: tuple[int, ...]) -> dict[str, dict[str, str]]:
    """path -> {target: form} that ``export``'s cost model (``--form auto``) picks for each matched
    layer at the input it sees; empty for a layer the network does not call."""
    from .lowering.costmodel import TARGETS, CostChooser

    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for f in found:
        def hook(_m, args, path=f.path):
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(path, tuple(args[0].shape))
        handles.append(f.module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    except Exception:  # noqa: BLE001 - the MACs count ran the network already; no forms then
        return {}
    finally:
        for handle in handles:
            handle.remove()
    return {f.path: {t: CostChooser(t)(FAMILIES[f.family], f.match, shapes[f.path], f.module) for t in TARGETS}
            for f in found if f.path in shapes}


def _first_conv_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """MACs of one forward pass, total and per module (keys are module paths, '' for the root).

    Runs on the ``meta`` device when the network allows it (no arithmetic, no memory), else on
    the CPU. Raises whatever the network raises when it cannot take ``input_shape``.
    """

    def run(device: str) -> FlopCounterMode:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            if device == "meta":
                tensors = {name: torch.empty_like(t, device="meta")
                           for name, t in [*model.named_parameters(), *model.named_buffers()]}
                functional_call(model, tensors, (torch.empty(input_shape, device="meta"),))
            else:
                model(torch.zeros(input_shape))
        return counter

    try:
        counter = run("meta")
    except Exception:  # noqa: BLE001 - not every network runs on meta; the CPU gives the real answer
        counter = run("cpu")
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        path = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        per_module[path] = sum(ops.values()) // 2
    return counter.get_total_flops() // 2, per_module


MAC_SAMPLES = 2  # the samples an inspection runs at --input-size (one for the MACs, two for the layer check)


def inspect_model(loaded: LoadedModel, input_size: int | tuple[int, int] = 224) -> Inspection:
    """Describe ``loaded``: architecture, options, parameters, MACs at ``input_size`` and its DCD layers.

    Raises :class:`InputError` when the network cannot run at ``input_size``.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if h < 1 or w < 1:
        raise InputError(f"Input size {h}×{w} is empty.", "Pass a positive --input-size, e.g. 224.")
    model = loaded.model
    input_shape = (1, _first_conv_channels(model), h, w)
    check_input_memory(MAC_SAMPLES, input_shape[1], (h, w), 4, "the inputs of the MAC count")
    try:
        macs, per_module = count_macs(model, input_shape)
    except Exception as exc:  # noqa: BLE001 - the network's own error says why the size does not fit
        raise InputError(
            f"{loaded.arch} cannot run on a {'×'.join(map(str, input_shape))} input ({summarize_exception(exc)}).",
            "Pass the input size the network was trained for with --input-size (e.g. 224 for ImageNet models).",
        ) from None

    layers: list[DcdLayer] = []
    dynamic: list[DynamicLayer] = []
    unmatched: list[UnmatchedLayer] = []
    dynamic_extra = 0
    paths = {id(m): p for p, m in model.named_modules()}
    example = torch.randn(2, *input_shape[1:], generator=torch.Generator().manual_seed(0))
    all_found = find_dynamic_layers(model, example)
    forms = _auto_forms(model, [f for f in all_found if isinstance(f.match, LayerInfo)], input_shape)
    for found in all_found:
        if not isinstance(found.match, LayerInfo):
            unmatched.append(UnmatchedLayer(found.path, found.family, found.match.reason))
            continue
        info = found.match
        layer_macs = per_module.get(found.path)
        # the static part's MACs, when it is a submodule of the layer (counted in the same pass)
        try:
            part = paths.get(id(FAMILIES[found.family].static_part(found.module, info)))
        except LoweringError:  # no static twin (the reason is the bench's to give)
            part = None
        static = per_module.get(part) if part is not None else None
        if layer_macs is not None and static is not None:
            dynamic_extra += layer_macs - static
        if isinstance(info, DcdLayerInfo):
            layers.append(DcdLayer.from_info(found.path, info, layer_macs, static))
        dynamic.append(DynamicLayer.from_info(found.path, FAMILIES[found.family].paper, info, layer_macs,
                                              forms.get(found.path)))
    known = [u.path for u in unmatched] + [d.path for d in dynamic]
    unmatched += [UnmatchedLayer(path, "unknown", why) for path, why in computed_weight_modules(model, example, known).items()]

    ckpt = loaded.checkpoint
    checkpoint = {
        "path": str(ckpt.path) if ckpt.path is not None else None,
        "sha256": ckpt.sha256,
        "tensors": len(ckpt.state_dict),
        **ckpt.metadata,
    }
    checkpoint.setdefault("format", "unknown")
    return Inspection(
        arch=loaded.arch,
        arch_options=dict(loaded.options),
        inferred=loaded.inferred,
        notes=list(loaded.notes),
        input_shape=input_shape,
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        static_macs=macs - dynamic_extra,
        layers=layers,
        unmatched=unmatched,
        checkpoint=checkpoint,
        dynamic=dynamic,
    )
