"""Lowering: recognise dynamic layers structurally and rewrite them into static ONNX-friendly ops.

One module per layer family (``dcd_conv``, ``dcd_head``), each with its algebra in the docstring.
"""

from . import dcd_conv, dcd_head  # noqa: F401  (registers the families)
from .base import FAMILIES, LayerInfo, Mismatch
from .rewrite import FoundLayer, LayerRewrite, RewriteReport, find_dcd_layers, lower_model, relative_error

__all__ = [
    "FAMILIES", "FoundLayer", "LayerInfo", "LayerRewrite", "Mismatch", "RewriteReport", "find_dcd_layers",
    "lower_model", "relative_error",
]
