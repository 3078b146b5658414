"""The static twin of a DCD network: the floor a DCD model can hope for.

A DCD convolution computes ``W(x) = Λ(x)·W0 + P·Φ(x)·Qᵀ``; its static twin keeps only ``W0``
(the layer's ``conv``, same kernel, stride and padding), i.e. ``Λ ≡ 1`` and ``Φ ≡ 0``. A DCD
classifier head keeps only its ``cls`` Linear (with bias). Every other module (stem, depthwise
convolutions, BatchNorms, pooling) is untouched, so the exporter folds the BatchNorms exactly as it
does for the lowered network, and the two graphs differ only in the dynamic terms.

The twin does not compute what the DCD network computes: it is a cost reference (same shapes,
same static arithmetic), used by ``dcd-deploy bench`` as the ``static`` row.
"""

from __future__ import annotations

import copy

from torch import nn

from ..errors import LoweringError
from .base import LayerInfo
from .rewrite import _swap, find_dcd_layers

# Which attribute of a recognised layer is its static part, per family.
STATIC_PART = {"dcd_conv": "conv", "dcd_head": "cls"}


def static_twin(model: nn.Module, strict: bool = True) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every DCD layer replaced by its static part.

    DCD convolutions (family ``dcd_conv``) become their ``conv`` (W0) and DCD heads (family
    ``dcd_head``) their ``cls`` Linear. ``model`` itself is left untouched. A module that looks
    dynamic but is not recognised raises :class:`LoweringError` naming it, unless ``strict`` is
    False, in which case it is kept as it is. A model without DCD layers also raises (its twin
    would be itself), unless ``strict`` is False.
    """
    twin = copy.deepcopy(model).eval()
    found = find_dcd_layers(twin)
    unrecognised = [f for f in found if not isinstance(f.match, LayerInfo)]
    if strict and unrecognised:
        details = "; ".join(f"{f.path}: {f.match.reason}" for f in unrecognised)
        raise LoweringError(
            f"{len(unrecognised)} layer(s) look dynamic but are not DCD layers as published, so they have no "
            f"known static part ({details}).",
            "Fix the layer to match the DCD reference structure (see `dcd-deploy inspect`).",
        )
    recognised = [f for f in found if isinstance(f.match, LayerInfo)]
    if strict and not recognised:
        raise LoweringError("The network has no DCD layers, so it has no static twin (it is its own).",
                            "Pass a network built from DCD layers (conv_dy, conv_basic_dy, DYModule, DYCls).")
    for f in recognised:
        part = getattr(f.module, STATIC_PART[f.match.family])
        if not f.path:  # the model is itself one DCD layer
            return part.eval()
        _swap(twin, f.path, part)
    return twin
