"""dcd-deploy: ship dynamic-convolution networks through ONNX.

The package is laid out as its pipeline, one folder per step:

* ``load/``      read a checkpoint, infer the architecture, build the network (``zoo/`` holds the
                 registered architectures);
* ``lowering/``  recognise dynamic layers structurally and rewrite them into static ONNX-friendly ops
                 (one module per layer family);
* ``runtime/``   ONNX Runtime sessions, ONNX file reading, runners and interleaved timing;
* ``exporting/`` export as named stages (lower, trace, simplify, stamp, check, self-check, write);
* ``compare/``   inputs, tolerances, metrics, parity and localisation of a divergence;
* ``bench/``     the deployment options of one model timed side by side, and their reports.

Top-level names are imported lazily, so ``import dcd_deploy`` (and ``dcd-deploy --help``) does not
import torch or ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Checkpoint": "dcd_deploy.load.checkpoint",
    "load_checkpoint": "dcd_deploy.load.checkpoint",
    "LoadedModel": "dcd_deploy.load.model",
    "load_model": "dcd_deploy.load.model",
    "ExportResult": "dcd_deploy.exporting.pipeline",
    "export": "dcd_deploy.exporting.pipeline",
    "check_parity": "dcd_deploy.compare.parity",
    "create_model": "dcd_deploy.zoo",
    "list_archs": "dcd_deploy.zoo",
    "DcdDeployError": "dcd_deploy.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dcd_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
