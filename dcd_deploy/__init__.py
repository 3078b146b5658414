"""dcd-deploy: ship dynamic-convolution networks (DCD, CondConv, DyConv, ODConv) through ONNX.

The package is laid out as its pipeline, one folder per step:

* ``load/``      read a checkpoint, infer the architecture, build the network (``zoo/`` holds the
                 registered architectures, each module declaring its own and its option inference);
* ``lowering/``  recognise dynamic layers structurally and rewrite them into static ONNX-friendly ops
                 (``family.py`` is the interface, ``families/`` one module per layer family);
* ``runtime/``   ONNX Runtime sessions, ONNX file reading, input data, runners and interleaved timing;
* ``exporting/`` export as named stages (validate, lower, trace, simplify, convert, quantize, stamp,
                 check, self-check, write);
* ``compare/``   tolerances, metrics, parity, localisation of a divergence, accuracy;
* ``bench/``     the deployment options of one model timed side by side, and their reports.
* ``serve/``     the exported graph served: Open Inference Protocol v2 over HTTP with a dynamic
                 batcher (uvicorn, or Ray Serve), a load test, a Triton model repository.

At the top: ``errors`` (the user-error family and exit codes), ``reporting`` (JSON, tables, atomic
output files), ``inspection`` (``dcd-deploy inspect``), ``testing`` (``assert_parity`` for users'
tests), ``sysinfo``, ``lazy``. Top-level names are imported lazily, so ``import dcd_deploy`` (and
``dcd-deploy --help``) does not import torch or ONNX Runtime.
"""

from __future__ import annotations

from .lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
