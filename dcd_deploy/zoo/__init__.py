"""The DCD architecture zoo: networks registered by name, built with :func:`create_model`.

One module per architecture family (``resnet``, ``mobilenetv2``) declares its architectures,
registers their factories and the probe that reads their options from a checkpoint; ``catalog``
lists them without importing torch, ``registry`` builds them. Names are imported lazily, so
``list_archs`` needs no torch.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

# public name -> submodule that defines it
_LAZY = {
    "ArchEntry": "catalog",
    "get_entry": "catalog",
    "list_archs": "catalog",
    "ArchSpec": "registry",
    "Inference": "registry",
    "create_model": "registry",
    "get_arch": "registry",
    "register_arch": "registry",
    "register_probe": "registry",
    "DYCls": "layers",
    "DYModule": "layers",
    "Hsigmoid": "layers",
    "SEModule_small": "layers",
    "conv_basic_dy": "layers",
    "conv_dy": "layers",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
