"""The DCD architecture zoo: networks registered by name, built with :func:`create_model`."""

from . import mobilenetv2, resnet  # noqa: F401  (registers the architectures)
from .layers import DYCls, DYModule, Hsigmoid, SEModule_small, conv_basic_dy, conv_dy
from .registry import ArchSpec, create_model, get_arch, list_archs, register_arch

__all__ = [
    "ArchSpec", "DYCls", "DYModule", "Hsigmoid", "SEModule_small", "conv_basic_dy", "conv_dy",
    "create_model", "get_arch", "list_archs", "register_arch",
]
