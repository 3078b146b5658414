"""Choosing each layer's lowered form: by name, or by the family's cost model for a target.

Each family estimates the extra cost of its forms on a target (``LayerFamily.costs``; the DCD
convolution's model, with its CPU and CUDA constants, is in ``families/dcd_conv.py``). The
choosers here are the :class:`~dcd_deploy.lowering.family.FormChooser` implementations that
``lower_model`` builds from a string; ``--tune`` measures instead (``exporting/tuning.py``).

On ``cuda`` no chooser picks a form that writes control flow (``LayerFamily.control_flow_forms``,
the expert families' ``loop``): :func:`target_forms` leaves them out, so every ``--target cuda``
file can be captured in a CUDA graph and runs where Loops are not supported (tract).

In a fixed-batch export ``lower_model`` also passes ``static_batch`` (the batch) to the chooser,
which passes it on to ``family.forms``; a family whose forms change with it (static-shape forms)
takes ``static_batch`` in ``costs`` as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from .family import FormChooser, LayerFamily, LayerInfo

TARGETS = ("cpu", "cuda")
# Targets whose graphs hold no control flow (Loop, If, Scan): CUDA graphs capture no control flow,
# and a Loop over the samples runs one small kernel per sample.
NO_CONTROL_FLOW = frozenset({"cuda"})


def check_target(target: str) -> str:
    """``target`` when it is one of :data:`TARGETS`, else ValueError."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
    return target


def target_forms(family: LayerFamily, info: LayerInfo, in_shape: tuple[int, ...], target: str,
                 static_batch: int | None = None, automatic: bool = True) -> list[str]:
    """``family.forms(...)`` less, on a target of :data:`NO_CONTROL_FLOW`, the forms that write control flow,
    and, for a choice made ``automatic``\ ally (cost model, ``--tune``) in a dynamic-batch export, less the
    family's ``batch_specific_forms`` (the portable graph holds nothing batch-dependent)."""
    forms = family.forms(info, in_shape, static_batch)
    if automatic and static_batch is None and family.batch_specific_forms:
        forms = [f for f in forms if f not in family.batch_specific_forms] or forms
    if target in NO_CONTROL_FLOW:
        forms = [f for f in forms if f not in family.control_flow_forms]
        if not forms:
            raise ValueError(f"every form of {info.summary()} writes control flow, which --target {target} excludes")
    return forms


def control_flow_forms() -> frozenset[str]:
    """Every form name some family writes with control flow."""
    from .family import FAMILIES

    return frozenset(f for family in FAMILIES.values() for f in family.control_flow_forms)


@dataclasses.dataclass(frozen=True)
class FixedForm:
    """The named form wherever the family offers it for the layer on ``target``, else the family's default form."""

    form: str
    target: str = "cpu"

    def __call__(self, family: LayerFamily, info: LayerInfo, in_shape: tuple[int, ...], layer: nn.Module,
                 static_batch: int | None = None) -> str:
        forms = target_forms(family, info, in_shape, self.target, static_batch, automatic=False)
        return self.form if self.form in forms else forms[0]


@dataclasses.dataclass(frozen=True)
class CostChooser:
    """The form with the least estimated cost on ``target`` (``family.costs``).

    ``overrides`` maps a family name to keyword arguments for its ``costs`` (other constants of its
    cost model, for fitting them); families not named are asked with their own constants.
    """

    target: str = "cpu"
    overrides: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_target(self.target)

    def __call__(self, family: LayerFamily, info: LayerInfo, in_shape: tuple[int, ...], layer: nn.Module,
                 static_batch: int | None = None) -> str:
        extra = dict(self.overrides.get(family.name, {}))
        if static_batch and family.forms(info, in_shape, static_batch) != family.forms(info, in_shape):
            extra["static_batch"] = static_batch  # a family with static-batch forms costs them when asked
        forms = target_forms(family, info, in_shape, self.target, static_batch)
        costs = {f: c for f, c in family.costs(info, in_shape, self.target, **extra).items() if f in forms}
        return min(costs, key=costs.get) if costs else forms[0]


def as_chooser(choose_form: FormChooser | str, target: str) -> FormChooser:
    """A chooser from ``'auto'`` (``target``'s cost model), a form name, or a chooser (returned as is).
    ValueError for a form that writes control flow on a target that excludes it."""
    if not isinstance(choose_form, str):
        return choose_form
    if target in NO_CONTROL_FLOW and choose_form in control_flow_forms():
        raise ValueError(f"the {choose_form} form writes an ONNX Loop, and --target {target} writes no control flow")
    return CostChooser(target) if choose_form == "auto" else FixedForm(choose_form, target)
