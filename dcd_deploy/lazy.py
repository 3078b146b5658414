"""Lazy package attributes: public names imported on first use (PEP 562).

``import dcd_deploy`` and the command line's ``--help`` must not import torch or ONNX Runtime, yet
the packages offer their public names at the top (``dcd_deploy.export``, ``dcd_deploy.bench.bench``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str], namespace: dict[str, Any]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a public name to the module that
    defines it (relative to ``package``, or absolute when it starts with ``dcd_deploy``); the value
    is cached in ``namespace`` (the package's globals) once imported."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        full = module if module.startswith("dcd_deploy") else f"{package}.{module}"
        value = getattr(importlib.import_module(full), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *names])

    return __getattr__, __dir__
