"""The layer-family interface: what a dynamic-layer family provides, and the registry of families.

A family is one module in ``dcd_deploy/lowering/families/`` holding a :class:`LayerFamily` subclass
decorated with :func:`register_family`; importing :mod:`dcd_deploy.lowering` imports every module
of that folder, so adding a family needs no edit anywhere else. A family owns everything about its
layers:

* ``looks_dynamic(module)``: a cheap structural hint (an attribute only such layers have);
* ``match(module)``: a :class:`LayerInfo` when the module has every part the lowering needs, else a
  :class:`Mismatch` naming what is missing or unexpected (recognition is structural: users copy
  the reference layer code under other class names, so class identity proves nothing);
* ``forms(info, in_shape)`` and ``costs(info, in_shape, target)``: the lowered forms it can emit
  (the first is the default) and their estimated extra cost on a target; ``control_flow_forms``
  names those whose graph holds control flow (an ONNX Loop), which ``--target cuda`` never uses;
  ``batch_specific_forms`` those whose graph branches on the batch size (the portable graph holds
  nothing batch-dependent, so neither the cost model nor ``--tune`` picks them for a dynamic-batch
  export: they are for a fixed ``--batch``, or asked for by name);
* ``lower(module, info, follow_bn, options)``: the static replacement, taking the same positional
  arguments as ``module.forward``; ``lowered_types`` lists the classes it produces (never
  re-matched) and ``folds_following_bn`` says whether it folds a BatchNorm2d that alone consumes
  the layer's output;
* ``static_part(module, info)``: the layer's static twin (what remains with every attention fixed);
* ``probe(model, example)``: only for a family that recognises layers by running the network
  rather than by structure (``probes = True``, e.g. ``generic``): module path -> match of each
  module the run reveals. Structural families are tried first and take precedence.

A :class:`FormChooser` picks one of ``family.forms(...)`` per layer (see ``costmodel`` for the
fixed-name and cost-model choosers).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

from torch import nn


@dataclasses.dataclass(kw_only=True)
class LayerInfo:
    """A recognised dynamic layer: what inspect, the report and the cost model see."""

    family: str  # registry name of the family, e.g. "dcd_conv"
    kind: str  # conv_dy | conv_basic_dy | DYModule | DYCls | CondConv2d | ...
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    groups: int = 1
    experts: int | None = None  # K (None for DCD)
    attentions: tuple[str, ...] = ()

    spatial: ClassVar[bool] = True  # False for a Linear layer (kernel 1, stride 1, padding 0 by convention)

    def geometry(self) -> str:
        """``3×3/2`` for a convolution, ``linear`` for a Linear layer."""
        return f"{self.kernel}×{self.kernel}/{self.stride}" if self.spatial else "linear"

    def summary(self) -> str:
        """One line, e.g. ``CondConv2d 32→64 3×3/1 g1, K=4``."""
        text = f"{self.kind} {self.c_in}→{self.c_out} {self.geometry()} g{self.groups}"
        return text + (f", K={self.experts}" if self.experts else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        d = dataclasses.asdict(self)
        d["attentions"] = list(self.attentions)
        return d


@dataclasses.dataclass(kw_only=True)
class DcdLayerInfo(LayerInfo):
    """A DCD layer: its latent size L, squeeze width, attention pool and part names."""

    latent: int
    squeeze: int
    pool: int | None  # output size of the attention pool (1 or 2); None for the head
    names: dict[str, str]  # role -> attribute name (e.g. {'q': 'conv_q'})
    attentions: tuple[str, ...] = ("scale", "phi")

    def summary(self) -> str:
        pool = f", pool {self.pool}×{self.pool}" if self.pool else ""
        return f"{self.kind} {self.c_in}→{self.c_out} {self.geometry()}, L={self.latent}{pool}"


@dataclasses.dataclass
class Mismatch:
    """Why a module that looks dynamic cannot be lowered (always falsy)."""

    family: str
    reason: str

    def __bool__(self) -> bool:  # a mismatch is never a match
        return False


@dataclasses.dataclass(frozen=True)
class LowerOptions:
    """Per-layer choices handed to :meth:`LayerFamily.lower`."""

    form: str  # one of family.forms(...)
    in_hw: tuple[int, int] | None  # input H, W the layer sees; None = dynamic size
    static_batch: int | None = None  # set only for fixed-batch exports (static-shape forms)
    channels_last: bool = False  # read maps channels-last where the form can (int8 graphs that run in NHWC)


class LayerFamily:
    """Base class of a dynamic-layer family, with defaults for the optional parts."""

    name: ClassVar[str]  # registry key, e.g. "dcd_conv"
    paper: ClassVar[str]  # "dcd" | "condconv" | "dyconv" | "odconv"
    title: ClassVar[str] = ""  # how messages name its layers ("DCD"); the name when empty
    lowered_types: ClassVar[tuple[type, ...]] = ()  # modules this family produces (never re-matched)
    folds_following_bn: ClassVar[bool] = False  # fold the BatchNorm2d that alone consumes the output
    probes: ClassVar[bool] = False  # recognises layers by running the network (``probe``), not by structure
    # The batch a dynamic-batch export traces its lowered layers at: 2 where the layer keeps the user's
    # own code, which may take another branch at batch 1 (``if x.shape[0] == 1``) that a trace would freeze.
    trace_batch: ClassVar[int] = 1
    control_flow_forms: ClassVar[frozenset[str]] = frozenset()  # forms whose graph holds Loop/If/Scan (not for cuda)
    batch_specific_forms: ClassVar[frozenset[str]] = frozenset()  # forms branching on the batch (never auto on a dynamic batch)

    @property
    def layer_title(self) -> str:
        return self.title or self.name

    def looks_dynamic(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def match(self, module: nn.Module) -> LayerInfo | Mismatch:
        raise NotImplementedError

    def probe(self, model: nn.Module, example: Any) -> dict[str, LayerInfo | Mismatch]:
        """Path -> match of each module a run of ``model`` on an input shaped like ``example`` reveals
        (families with ``probes = True``; the structural ones recognise nothing this way)."""
        return {}

    def forms(self, info: LayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        """Candidate lowered forms for a layer seeing ``in_shape``; the first is the default."""
        return ["default"]

    def costs(self, info: LayerInfo, in_shape: tuple[int, ...], target: str) -> dict[str, float]:
        """Estimated extra cost of each form on ``target`` (keys ⊆ forms); equal costs by default."""
        return dict.fromkeys(self.forms(info, in_shape), 0.0)

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None,
              options: LowerOptions) -> nn.Module:
        raise NotImplementedError

    def static_part(self, module: nn.Module, info: LayerInfo) -> nn.Module:
        raise NotImplementedError

    def extra_inputs(self, info: LayerInfo) -> nn.Module | None:
        """A module computing the layer's positional arguments after the input from the input (a
        tuple), for timing the layer alone (``--tune``); None when it takes the input only."""
        return None


FAMILIES: dict[str, LayerFamily] = {}


def register_family(cls: type[LayerFamily]) -> type[LayerFamily]:
    """Class decorator: register one instance of the family under ``cls.name``."""
    old = FAMILIES.get(cls.name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"two layer families are named {cls.name!r}: {type(old).__qualname__} and {cls.__qualname__}")
    FAMILIES[cls.name] = cls()
    return cls


def trace_batch(model: nn.Module) -> int:
    """The batch a dynamic-batch export of the lowered ``model`` traces at: the largest
    ``trace_batch`` of the families whose lowered modules it holds (1 when none asks for more)."""
    present = {type(m) for m in model.modules()}
    return max([f.trace_batch for f in FAMILIES.values() if present & set(f.lowered_types)], default=1)


def lowered_types() -> tuple[type, ...]:
    """Every module class some family produces."""
    return tuple(t for family in FAMILIES.values() for t in family.lowered_types)


class FormChooser(Protocol):
    """Picks the lowered form of one layer, one of ``family.forms(info, in_shape, static_batch)``.

    ``lower_model`` passes ``static_batch`` only in a fixed-batch export (so a chooser written
    without the keyword still works for dynamic-batch exports)."""

    def __call__(self, family: LayerFamily, info: LayerInfo, in_shape: tuple[int, ...], layer: nn.Module,
                 static_batch: int | None = None) -> str: ...


def describe_parts(module: nn.Module, wanted: list[str]) -> str:
    """The parts of ``wanted`` the module has, for a mismatch reason."""
    have = [n for n in wanted if hasattr(module, n)]
    return ", ".join(have) if have else "none of the expected parts"
