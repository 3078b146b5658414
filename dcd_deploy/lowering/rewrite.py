"""Find the dynamic layers of any ``nn.Module``, lower them, and report what happened.

The pipeline for one model:

1. walk the module tree; every module that *looks* dynamic to a registered family is matched
   structurally by it (a mismatch is recorded with its reason, never silently passed through);
2. run the example input once with hooks, to capture every input of each layer (its size decides
   the exact pooling op and the lowered form);
3. trace the network with torch.fx, dynamic layers as leaves, to find the BatchNorm that
   consumes each layer's output and nothing else (folded into the layer by families that do so);
4. build each replacement with the form the chooser picks, check it numerically against the
   original layer on the captured inputs, and only then swap it in.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import fx, nn

from ..errors import InputError
from .costmodel import NO_CONTROL_FLOW, as_chooser
from .family import FAMILIES, FormChooser, LayerFamily, LayerInfo, LowerOptions, Mismatch, lowered_types
from .report import LayerRewrite, RewriteReport

# Per-layer numerical gate before a swap: relative error of the lowered layer (float32) against
# the original layer (float32) on the captured input.
LAYER_CHECK_RTOL = 1e-4


@dataclasses.dataclass
class FoundLayer:
    path: str
    module: nn.Module
    family: str
    match: LayerInfo | Mismatch


@dataclasses.dataclass
class _Captured:
    """The positional and keyword arguments of a layer's first call."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.args[0].shape) if self.args and isinstance(self.args[0], torch.Tensor) else ()


def find_dynamic_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[FoundLayer]:
    """Every module that looks like a dynamic layer to some family, with its structural match or mismatch.

    With an ``example`` input, the families that recognise layers by running the network (``probes``)
    add what their run reveals, in module order: a structural match and what lies under it take
    precedence; a structural mismatch is replaced where the run recognises the same module.
    """
    found: list[FoundLayer] = []
    skip: list[str] = []
    produced = lowered_types()
    modules = dict(model.named_modules())
    for path, module in modules.items():
        if isinstance(module, produced) or any(path.startswith(p + ".") for p in skip):
            continue
        for family in FAMILIES.values():
            if not family.probes and family.looks_dynamic(module):
                found.append(FoundLayer(path, module, family.name, family.match(module)))
                skip.append(path)
                break
    if example is None:
        return found
    for family in FAMILIES.values():
        if not family.probes:
            continue
        for path, match in family.probe(model, example).items():
            covering = next((f for f in found if f.path == path or path.startswith(f.path + ".") or not f.path), None)
            inside = [f for f in found if f.path.startswith(path + ".") or (not path and f.path)]
            if covering is not None:
                if covering.path == path and isinstance(covering.match, Mismatch) and isinstance(match, LayerInfo):
                    found[found.index(covering)] = FoundLayer(path, modules[path], family.name, match)
                continue
            if inside:  # it contains a layer another family owns: lowering both would nest two rewrites
                match = Mismatch(family.name, f"it contains the {inside[0].family} layer {inside[0].path}, and runs a "
                                              "dynamic convolution of its own besides")
            found.append(FoundLayer(path, modules[path], family.name, match))
    order = {p: i for i, p in enumerate(modules)}
    return sorted(found, key=lambda f: order[f.path])


find_dcd_layers = find_dynamic_layers  # the name used before families other than DCD existed


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # modules some family produced stay whole too (their exported nodes keep their scope names)
        return id(m) in self.leaves or isinstance(m, lowered_types()) or super().is_leaf_module(m, qualname)


def _detached(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _capture_inputs(model: nn.Module, paths: list[str], example: torch.Tensor) -> dict[str, _Captured]:
    captured: dict[str, _Captured] = {}
    modules = dict(model.named_modules())
    handles = []
    for path in paths:
        def hook(_m, args, kwargs, path=path):
            if path not in captured:
                captured[path] = _Captured(tuple(_detached(a) for a in args), {k: _detached(v) for k, v in kwargs.items()})
        handles.append(modules[path].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise InputError(
            f"The network does not run on an input of shape {tuple(example.shape)}: {first}.",
            "Choose an --input-size the network accepts (e.g. 224, or the size it was trained at).",
        ) from None
    finally:
        for h in handles:
            h.remove()
    return captured


def _trace(model: nn.Module, found: list[FoundLayer], report: RewriteReport) -> fx.GraphModule | None:
    """The network traced with the dynamic layers as leaves, or None (with a note) when fx cannot trace it."""
    try:
        return fx.GraphModule(model, _LeafTracer({id(f.module) for f in found}).trace(model))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no graph-level folding
        first = next(iter(str(exc).strip().splitlines()), "")[:120]
        report.notes.append(
            f"torch.fx could not trace the network ({type(exc).__name__}: {first}); "
            "layers were swapped in place and the BatchNorms after them were left for the exporter"
        )
        return None


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
            # a plain BatchNorm2d only: a subclass with its own forward (timm's BatchNormAct2d adds an
            # activation) is not an affine map
            plain = isinstance(bn, nn.BatchNorm2d) and type(bn).forward is nn.BatchNorm2d.forward
            if plain and bn.num_features == c_out and bn.track_running_stats and not bn.training:
                return user
            return None
    return None


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out − ref| / max |ref| (0 when both are zero)."""
    scale = ref.abs().max().item()
    diff = (out.double() - ref.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


@dataclasses.dataclass
class _Settings:
    choose: FormChooser
    dynamic_size: bool
    static_batch: int | None
    check: bool
    channels_last: bool = False
    target: str = "cpu"


def _lower_one(f: FoundLayer, family: LayerFamily, call: _Captured, bn: nn.Module | None,
               settings: _Settings) -> tuple[nn.Module | None, LayerRewrite]:
    """The checked replacement of one matched layer (None when the gate rejects it) and its report line."""
    info = f.match
    in_shape = call.in_shape
    batch = {"static_batch": settings.static_batch} if settings.static_batch else {}  # choosers of older code lack it
    form = settings.choose(family, info, in_shape, f.module, **batch)
    if form in family.control_flow_forms and settings.target in NO_CONTROL_FLOW:
        raise ValueError(f"{f.path}: the chooser picked the {form} form, which writes control flow; "
                         f"--target {settings.target} writes none")
    in_hw = None if settings.dynamic_size or len(in_shape) < 4 else (in_shape[2], in_shape[3])
    lowered = family.lower(f.module, info, bn, LowerOptions(form, in_hw, settings.static_batch, settings.channels_last))
    err = None
    if settings.check:
        with torch.no_grad():
            ref = f.module(*call.args, **call.kwargs)
            if bn is not None:
                ref = bn(ref)
            err = relative_error(lowered(*call.args, **call.kwargs), ref)
        if not torch.isfinite(ref).all():
            reason = ("the original network computes NaN or inf at this layer on the example input, so the rewrite "
                      "cannot be checked: its weights or BatchNorm statistics are broken (an untrained or diverged network?)")
            return None, LayerRewrite(f.path, f.family, info.kind, False, reason, info, in_shape=in_shape, check_error=err)
        if not err <= LAYER_CHECK_RTOL:
            reason = (f"structure matches but outputs differ from the {family.layer_title} computation (relative error "
                      f"{err:.2e}); its forward() is not the reference one")
            return None, LayerRewrite(f.path, f.family, info.kind, False, reason, info, in_shape=in_shape, check_error=err)
    return lowered, LayerRewrite(f.path, f.family, info.kind, True, None, info, form, None, in_shape, err)


def lower_model(
    model: nn.Module,
    example_input: torch.Tensor,
    choose_form: FormChooser | str = "auto",
    dynamic_size: bool = False,
    target: str = "cpu",
    check: bool = True,
    progress: bool = False,
    static_batch: int | None = None,
    channels_last: bool = False,
) -> tuple[nn.Module, RewriteReport]:
    """Return a lowered copy of ``model`` (eval mode) and the rewrite report.

    ``choose_form`` picks each layer's lowered form: a form name (used wherever the layer's
    family offers it, e.g. 'factored' or 'merged'), 'auto' for ``target``'s cost model ('cpu'
    or 'cuda'), or a :class:`~dcd_deploy.lowering.family.FormChooser`. ``static_batch`` is set
    only for a fixed-batch, fixed-size export: families then offer their static-shape forms
    (the chooser is called with ``static_batch=``), whose graphs run only at that batch.
    ``channels_last`` asks the families for the channels-last variants of their forms (for int8
    graphs that run in NHWC; see :class:`~dcd_deploy.lowering.family.LowerOptions`). The original model is left untouched.
    """
    from tqdm.auto import tqdm

    settings = _Settings(as_chooser(choose_form, target), dynamic_size, static_batch, check, channels_last, target)
    model = copy.deepcopy(model).eval()
    found = find_dynamic_layers(model, example_input)
    report = RewriteReport([])
    captured = _capture_inputs(model, [f.path for f in found if isinstance(f.match, LayerInfo)], example_input)
    gm = _trace(model, found, report)
    root = gm if gm is not None else model
    for f in tqdm(found, desc="lowering", unit="layer", disable=None if progress else True, leave=False):
        family = FAMILIES[f.family]
        if isinstance(f.match, Mismatch):
            reason = f.match.reason if family.probes else f"not a {family.layer_title} layer as published: {f.match.reason}"
            report.layers.append(LayerRewrite(f.path, f.family, None, False, reason))
            continue
        if f.path not in captured:
            report.layers.append(LayerRewrite(f.path, f.family, f.match.kind, False,
                                              "the layer was never called on the example input", f.match))
            continue
        bn_node = _following_bn(gm, f.path, f.match.c_out) if gm is not None and family.folds_following_bn else None
        lowered, line = _lower_one(f, family, captured[f.path], gm.get_submodule(bn_node.target) if bn_node is not None else None,
                                   settings)
        report.layers.append(line)
        if lowered is None:
            continue
        if not f.path:  # the network is itself the layer
            return lowered.eval(), report
        _swap(root, f.path, lowered)
        if bn_node is not None:
            line.folded_bn = bn_node.target
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
            _swap(gm, bn_node.target, nn.Identity())
    if gm is not None:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        replaced = [line.path for line in report.lowered] + [line.folded_bn for line in report.lowered if line.folded_bn]
        _keep_unreferenced(model, gm, replaced)
        gm.recompile()
    return root.eval(), report


def _keep_unreferenced(model: nn.Module, gm: fx.GraphModule, replaced: list[str]) -> None:
    """Put back in ``gm`` the modules of ``model`` the graph never calls but whose parameters a leaf
    reads through a plain attribute (a kernel warehouse shared by the layers of a stage, held in a
    list so that it is not their submodule): without them the exporter would see those parameters
    as constants of an unknown module. ``replaced``: the paths of the lowered layers and folded
    BatchNorms, never put back."""
    have = {id(t) for t in [*gm.parameters(), *gm.buffers()]}
    present = {path for path, _ in gm.named_modules()}
    for path, module in model.named_modules():
        if not path or path in present or any(path == r or path.startswith(r + ".") for r in replaced):
            continue  # the lowered layers and the BatchNorms folded into them stay replaced
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if own and any(id(t) not in have for t in own):
            gm.add_submodule(path, module)
            have |= {id(t) for t in [*module.parameters(), *module.buffers()]}


def _swap(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
