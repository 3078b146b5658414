"""Find the dynamic layers of any ``nn.Module``, lower them, and report what happened.

The pipeline for one model:

1. walk the module tree; every module that *looks* dynamic is matched structurally by its family
   (a mismatch is recorded with its reason, never silently passed through);
2. run the example input once with hooks, to capture each layer's real input (its size decides
   the exact pooling op and the lowered form);
3. trace the network with torch.fx, dynamic layers as leaves, to find the BatchNorm that
   consumes each layer's output and nothing else (that BatchNorm is folded into the layer);
4. build each replacement, check it numerically against the original layer on the captured
   input, and only then swap it in.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from ..errors import InputError
from .base import FAMILIES, LayerInfo, Mismatch
from .dcd_conv import ConvLowering, LoweredDcdConv
from .dcd_head import LoweredDcdHead

# Per-layer numerical gate before a swap: relative error of the lowered layer (float32) against
# the original layer (float32) on the captured input.
LAYER_CHECK_RTOL = 1e-4

LOWERED_TYPES = (LoweredDcdConv, LoweredDcdHead)


@dataclasses.dataclass
class FoundLayer:
    path: str
    module: nn.Module
    family: str
    match: LayerInfo | Mismatch


@dataclasses.dataclass
class LayerRewrite:
    path: str
    family: str
    kind: str | None
    lowered: bool
    reason: str | None = None
    info: LayerInfo | None = None
    form: str | None = None
    folded_bn: str | None = None
    in_shape: tuple[int, ...] | None = None
    check_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "path": self.path, "family": self.family, "kind": self.kind, "lowered": self.lowered,
            "reason": self.reason, "form": self.form, "folded_bn": self.folded_bn,
            "in_shape": list(self.in_shape) if self.in_shape else None, "check_error": self.check_error,
        }
        if self.info is not None:
            d.update(c_in=self.info.c_in, c_out=self.info.c_out, kernel=self.info.kernel, stride=self.info.stride,
                     latent=self.info.latent, pool=self.info.pool)
        return d


@dataclasses.dataclass
class RewriteReport:
    """What the rewrite did to each dynamic layer; truthy when every one was lowered."""

    layers: list[LayerRewrite]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def lowered(self) -> list[LayerRewrite]:
        return [layer for layer in self.layers if layer.lowered]

    @property
    def not_lowered(self) -> list[LayerRewrite]:
        return [layer for layer in self.layers if not layer.lowered]

    def __bool__(self) -> bool:
        return not self.not_lowered

    def summary(self) -> str:
        forms: dict[str, int] = {}
        for layer in self.lowered:
            forms[layer.form or layer.kind] = forms.get(layer.form or layer.kind, 0) + 1
        folded = sum(1 for layer in self.lowered if layer.folded_bn)
        text = f"{len(self.lowered)}/{len(self.layers)} DCD layers lowered"
        if forms:
            text += " (" + ", ".join(f"{n} {k}" for k, n in sorted(forms.items())) + f"; {folded} following BatchNorms folded)"
        for layer in self.not_lowered:
            text += f"; NOT lowered: {layer.path} ({layer.reason})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "layers": [layer.to_dict() for layer in self.layers], "notes": self.notes}


def find_dcd_layers(model: nn.Module) -> list[FoundLayer]:
    """Every module that looks like a dynamic layer, with its structural match or mismatch."""
    found: list[FoundLayer] = []
    skip: list[str] = []
    for path, module in model.named_modules():
        if isinstance(module, LOWERED_TYPES) or any(path.startswith(p + ".") for p in skip):
            continue
        for family in FAMILIES:
            if family.looks_dynamic(module):
                found.append(FoundLayer(path, module, family.name, family.match(module)))
                skip.append(path)
                break
    return found


def _family(name: str):
    return next(f for f in FAMILIES if f.name == name)


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _capture_inputs(model: nn.Module, paths: list[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for path in paths:
        def hook(_m, args, path=path):
            captured.setdefault(path, args[0].detach().clone())
        handles.append(modules[path].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:
        raise InputError(
            f"The network does not run on an input of shape {tuple(example.shape)}: {str(exc).splitlines()[0]}.",
            "Choose an --input-size the network accepts (e.g. 224, or the size it was trained at).",
        ) from None
    finally:
        for h in handles:
            h.remove()
    return captured


def _following_bn(gm: fx.GraphModule, path: str, c_out: int) -> fx.Node | None:
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == path:
            users = list(node.users)
            if len(users) != 1:
                return None
            user = users[0]
            if user.op != "call_module" or user.args[0] is not node or len(user.args) != 1 or user.kwargs:
                return None
            bn = gm.get_submodule(user.target)
            if isinstance(bn, nn.BatchNorm2d) and bn.num_features == c_out and bn.track_running_stats and not bn.training:
                return user
            return None
    return None


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out − ref| / max |ref| (0 when both are zero)."""
    scale = ref.abs().max().item()
    diff = (out.double() - ref.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


FormChooser = Callable[[LayerInfo, tuple[int, ...]], str]


def factored_everywhere(info: LayerInfo, in_shape: tuple[int, ...]) -> str:
    return "factored"


def lower_model(
    model: nn.Module,
    example_input: torch.Tensor,
    choose_form: FormChooser | str = "auto",
    dynamic_size: bool = False,
    target: str = "cpu",
    check: bool = True,
    progress: bool = False,
) -> tuple[nn.Module, RewriteReport]:
    """Return a lowered copy of ``model`` (eval mode) and the rewrite report.

    ``choose_form`` picks each DCD convolution's lowered form: a name ('factored', 'merged',
    'auto' for ``target``'s cost model: 'cpu' or 'cuda') or a callable ``(info, input_shape) -> form``.
    The original model is left untouched.
    """
    from .costmodel import cost_chooser

    if isinstance(choose_form, str):
        fixed = choose_form
        if fixed == "auto":
            choose_form = cost_chooser(target)
        else:
            choose_form = lambda info, shape: fixed if (fixed != "merged" or (info.kernel, info.stride) == (1, 1)) else "factored"
    model = copy.deepcopy(model).eval()
    found = find_dcd_layers(model)
    matched = [f for f in found if isinstance(f.match, LayerInfo)]
    report = RewriteReport([])
    captured = _capture_inputs(model, [f.path for f in matched], example_input)

    try:
        gm: fx.GraphModule | None = fx.GraphModule(model, _LeafTracer({id(f.module) for f in found}).trace(model))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no graph-level folding
        gm = None
        report.notes.append(
            f"torch.fx could not trace the network ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "layers were swapped in place and the BatchNorms after them were left for the exporter"
        )
    target = gm if gm is not None else model

    from tqdm.auto import tqdm

    for f in tqdm(found, desc="lowering", unit="layer", disable=None if progress else True, leave=False):
        if isinstance(f.match, Mismatch):
            report.layers.append(LayerRewrite(f.path, f.family, None, False, f"not a DCD layer as published: {f.match.reason}"))
            continue
        info = f.match
        x = captured.get(f.path)
        if x is None:
            report.layers.append(LayerRewrite(f.path, f.family, info.kind, False, "the layer was never called on the example input", info))
            continue
        bn_node = _following_bn(gm, f.path, info.c_out) if gm is not None and info.family == "dcd_conv" else None
        bn = gm.get_submodule(bn_node.target) if bn_node is not None else None
        in_shape = tuple(x.shape)
        if info.family == "dcd_conv":
            if getattr(choose_form, "wants_layer", False):
                form = choose_form(info, in_shape, layer=f.module)
            else:
                form = choose_form(info, in_shape)
            options = ConvLowering(form, None if dynamic_size else (in_shape[2], in_shape[3]))
        else:
            form, options = "gemm", None
        lowered = _family(info.family).lower(f.module, info, bn, options)
        err = None
        if check:
            with torch.no_grad():
                ref = f.module(x)
                if bn is not None:
                    ref = bn(ref)
                err = relative_error(lowered(x), ref)
            if not err <= LAYER_CHECK_RTOL:
                report.layers.append(LayerRewrite(
                    f.path, f.family, info.kind, False,
                    f"structure matches but outputs differ from the DCD computation (relative error {err:.2e}); "
                    "its forward() is not the reference one", info, in_shape=in_shape, check_error=err))
                continue
        _swap(target, f.path, lowered)
        if bn_node is not None:
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
            _swap(gm, bn_node.target, nn.Identity())
        report.layers.append(LayerRewrite(f.path, f.family, info.kind, True, None, info, form,
                                          bn_node.target if bn_node is not None else None, in_shape, err))
    if gm is not None:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return target.eval(), report


def _swap(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
