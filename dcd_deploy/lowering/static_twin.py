"""The static twin of a DCD network: the floor a DCD model can hope for.

Each recognised dynamic layer is replaced by its family's ``static_part``: a DCD convolution
computes ``W(x) = Λ(x)·W0 + P·Φ(x)·Qᵀ`` and its twin keeps only ``W0`` (the layer's ``conv``, same
kernel, stride and padding), i.e. ``Λ ≡ 1`` and ``Φ ≡ 0``; a DCD classifier head keeps only its
``cls`` Linear (with bias). Every other module (stem, depthwise
convolutions, BatchNorms, pooling) is untouched, so the exporter folds the BatchNorms exactly as it
does for the lowered network, and the two graphs differ only in the dynamic terms.

The twin does not compute what the DCD network computes: it is a cost reference (same shapes,
same static arithmetic), used by ``dcd-deploy bench`` as the ``static`` row.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import LoweringError
from .family import FAMILIES, LayerInfo
from .rewrite import _swap, find_dynamic_layers


def static_twin(model: nn.Module, strict: bool = True, example: torch.Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every dynamic layer replaced by its static part.

    Each layer becomes its family's static part (a DCD convolution its ``conv`` W0, a DCD head
    its ``cls`` Linear, an expert convolution one convolution of one expert's shape). ``model`` itself is left untouched. A module that looks
    dynamic but is not recognised raises :class:`LoweringError` naming it, unless ``strict`` is
    False, in which case it is kept as it is. A model without dynamic layers also raises (its twin
    would be itself), unless ``strict`` is False. ``example`` (an input) lets the families that
    recognise layers by running the network (``generic``) find theirs too; a layer whose static part
    cannot be derived raises :class:`LoweringError` with the reason.
    """
    twin = copy.deepcopy(model).eval()
    found = find_dynamic_layers(twin, example)
    unrecognised = [f for f in found if not isinstance(f.match, LayerInfo)]
    if strict and unrecognised:
        details = "; ".join(f"{f.path}: {f.match.reason}" for f in unrecognised)
        raise LoweringError(
            f"{len(unrecognised)} layer(s) look dynamic but match no supported family as published, so they have "
            f"no known static part ({details}).",
            "Fix the layer to match its family's published structure (see `dcd-deploy inspect` and the README's "
            "supported dynamic layers).",
        )
    recognised = [f for f in found if isinstance(f.match, LayerInfo)]
    if strict and not recognised:
        raise LoweringError("The network has no dynamic layers, so it has no static twin (it is its own).",
                            "Pass a network built from dynamic layers (DCD, CondConv, DyConv or ODConv).")
    for f in recognised:
        part = FAMILIES[f.family].static_part(f.module, f.match)
        if not f.path:  # the model is itself one dynamic layer
            return part.eval()
        _swap(twin, f.path, part)
    return twin
