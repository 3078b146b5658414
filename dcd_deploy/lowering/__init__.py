"""Lowering: recognise dynamic layers structurally and rewrite them into static ONNX-friendly ops.

``family.py`` is the interface every layer family implements; each family is one module of
``families/`` (registered when this package is imported), with its algebra in the docstring.
``rewrite.py`` finds, lowers, checks and swaps the layers; ``costmodel.py`` chooses their forms.
"""

from . import families  # noqa: F401  (registers every family)
from .dynamic_forms import FORMS as _EXPERT_FORMS
from .family import FAMILIES, DcdLayerInfo, LayerFamily, LayerInfo, LowerOptions, Mismatch, register_family
from .report import LayerRewrite, RewriteReport
from .rewrite import FoundLayer, find_dcd_layers, find_dynamic_layers, lower_model, relative_error

# What ``export --form`` takes: the cost model's choice, or a form name used wherever a layer's family offers it
FORM_CHOICES = tuple(dict.fromkeys(("auto", *families.dcd_conv.FORMS, *_EXPERT_FORMS, *families.generic.FORMS)))

__all__ = [
    "FAMILIES", "FORM_CHOICES", "DcdLayerInfo", "FoundLayer", "LayerFamily", "LayerInfo", "LayerRewrite", "LowerOptions",
    "Mismatch",
    "RewriteReport", "find_dcd_layers", "find_dynamic_layers", "lower_model", "register_family", "relative_error",
]
