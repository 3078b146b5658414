"""dcd-deploy: ship Dynamic Convolution Decomposition (DCD) networks through ONNX."""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint
from .errors import DcdDeployError
from .loading import LoadedModel, load_model
from .onnx_export import ExportResult, export
from .zoo import create_model, list_archs

__all__ = [
    "Checkpoint", "DcdDeployError", "ExportResult", "LoadedModel", "__version__", "create_model", "export",
    "list_archs", "load_checkpoint", "load_model",
]
