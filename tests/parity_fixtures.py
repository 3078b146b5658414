"""Files for the parity tests: one small DCD network, its checkpoint, a faithful export, and
deliberately broken copies of that export (edited in the ONNX file, so no second export is needed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from dcd_deploy.exporting.pipeline import export
from dcd_deploy.load.model import LoadedModel, load_model
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

ARCH = "mobilenetv2_dcd"
OPTIONS = {"width_mult": 0.25, "num_classes": 10, "fc_squeeze": 8}
SIZE = 48
DCD_LAYER = "features.3.conv.0"
FIRST_DCD_LAYER = "features.2.conv.0"


@dataclasses.dataclass
class ParityCase:
    folder: Path
    checkpoint: Path
    onnx: Path
    loaded: LoadedModel


def save_reference_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """The reference training script's format (DataParallel 'module.' prefixes)."""
    torch.save({"arch": ARCH, "epoch": 1, "best_prec1": 0.0, "optimizer": {},
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def build_model(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return calibrate_batchnorm(create_model(ARCH, **{**OPTIONS, **options}), SIZE)


def build_case(folder: Path) -> ParityCase:
    checkpoint = save_reference_checkpoint(build_model(), folder / "model.pth")
    loaded = load_model(checkpoint)
    path = folder / "model.onnx"
    export(loaded, path, input_size=SIZE)
    return ParityCase(folder, checkpoint, path, loaded)


def edit_initializer(src: Path, dst: Path, name: str, change) -> Path:
    """Copy ``src`` to ``dst`` with initializer ``name`` replaced by ``change(array)``."""
    model = onnx.load(src)
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)).astype(np.float32), name))
            break
    else:
        raise KeyError(name)
    onnx.save(model, dst)
    return dst


def dcd_static_kernel(path: Path, layer: str = DCD_LAYER) -> str:
    """The initializer holding W0 of a lowered DCD layer: ``conv.weight`` (factored form) or ``w0`` (merged)."""
    names = {i.name for i in onnx.load(path).graph.initializer}
    return next(n for n in (f"{layer}.conv.weight", f"{layer}.w0") if n in names)


def first_conv_weight(path: Path) -> str:
    """The weight initializer of the graph's first Conv (the stem, before any DCD layer)."""
    model = onnx.load(path)
    return next(n.input[1] for n in model.graph.node if n.op_type == "Conv")


def with_static_batch(src: Path, dst: Path, batch: int) -> Path:
    """The same graph with its batch axis fixed (the exported graph reshapes with -1, so this is valid)."""
    model = onnx.load(src)
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    onnx.save(model, dst)
    return dst


def without_metadata(src: Path, dst: Path) -> Path:
    model = onnx.load(src)
    del model.metadata_props[:]
    onnx.save(model, dst)
    return dst
