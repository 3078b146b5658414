"""Reading an ONNX file: its graph, its single image input, its metadata and its precision.

One reader for every command that is given an ONNX file (parity, bench, localisation). The file
is parsed without its external weights; anything that is not an ONNX model fails here with an
:class:`InputError` that says what the file is instead (a missing path, a folder, a PyTorch
checkpoint given in the ONNX model's place, an unreadable or empty protobuf).

Input sizes are written ``224`` or ``224x192`` (height × width) everywhere: on the command line
and in the ``dcd_deploy.input_size`` metadata that ``dcd-deploy export`` stamps;
:func:`parse_size` is the one parser of that notation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError

CONTROL_FLOW = ("Loop", "If", "Scan")  # ONNX control-flow operators (CUDA graphs cannot capture them)


def control_flow_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names (or op types) of every Loop, If and Scan node in ``graph`` and its subgraphs."""
    found = []
    for node in graph.node:
        if node.op_type in CONTROL_FLOW:
            found.append(node.name or node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found += control_flow_nodes(sub)
    return found


_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}
# torch.save's legacy format: a pickle stream opening with PROTO 2 and the LONG1 magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a"
_EXPORT_HINT = "Pass the .onnx file written by `dcd-deploy export`"


def parse_size(value: int | str | Sequence[int]) -> tuple[int, int]:
    """``224``, ``'224'``, ``'224x192'`` or ``(224, 192)`` (height × width); raises :class:`InputError`."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        parts: list[object] = str(value).lower().replace("×", "x").replace(",", "x").split("x")
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = []
    try:
        values = [int(p) for p in parts if isinstance(p, (str, int, np.integer)) and not isinstance(p, bool)]
    except ValueError:
        values = []
    if len(values) != len(parts):
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise InputError(f"{value!r} is not an input size.", "Write it as 224 or 224x192 (height x width).")
    return values[0], values[1]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The ONNX model's single input: name, shape (``None`` for a symbolic axis) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    metadata_size: tuple[int, int] | None = None  # 'dcd_deploy.input_size' (H, W), if recorded

    @property
    def channels(self) -> int | None:
        return self.shape[1] if len(self.shape) == 4 else None

    @property
    def static_batch(self) -> int | None:
        return self.shape[0] if self.shape else None

    @property
    def static_hw(self) -> tuple[int, int] | None:
        if len(self.shape) == 4 and self.shape[2] is not None and self.shape[3] is not None:
            return self.shape[2], self.shape[3]
        return None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The size the model was exported for: the recorded metadata, else the static H × W."""
        return self.metadata_size or self.static_hw

    @property
    def dynamic(self) -> bool:
        return any(d is None for d in self.shape)

    def describe(self) -> str:
        dims = ["N" if d is None and i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)]
        return f"{self.name!r} {'×'.join(dims)} {np.dtype(self.dtype).name}"


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """Read the single image input of ``model`` (initializers listed as inputs are skipped)."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise InputError(
            f"The ONNX model has {len(inputs)} inputs ({names}); dcd-deploy handles single-input image models.",
            "Pass a model written by `dcd-deploy export` (one input, N×C×H×W).",
        )
    value = inputs[0]
    tensor = value.type.tensor_type
    dtype = _ONNX_TO_NUMPY.get(tensor.elem_type)
    if dtype is None:
        raise InputError(
            f"The ONNX input {value.name!r} has element type {onnx.TensorProto.DataType.Name(tensor.elem_type)}, "
            "not a floating-point image tensor.",
            "Pass a model written by `dcd-deploy export`, whose input is float32 N×C×H×W.",
        )
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
    meta = {p.key: p.value for p in model.metadata_props}
    size = None
    if "dcd_deploy.input_size" in meta:
        try:
            size = parse_size(meta["dcd_deploy.input_size"])
        except InputError:
            size = None
    return InputSpec(value.name, shape, np.dtype(dtype), size)


def model_precision(model: onnx.ModelProto) -> str:
    """'int8', 'float16' or 'float32': the export metadata, else the dtype most float initializers have
    ('int8' also for a QDQ graph without metadata: one whose Conv weights are dequantized int8)."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("dcd_deploy.precision") in ("int8", "float16", "float32"):
        return meta["dcd_deploy.precision"]
    if any(n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node):
        return "int8"
    counts = {"float16": 0, "float32": 0}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16:
            counts["float16"] += 1
        elif init.data_type == onnx.TensorProto.FLOAT:
            counts["float32"] += 1
    return "float16" if counts["float16"] > counts["float32"] else "float32"


@dataclasses.dataclass
class OnnxFile:
    """An ONNX file as read by :func:`read_onnx` (``proto`` holds no external weights)."""

    path: Path
    proto: onnx.ModelProto

    @functools.cached_property
    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self.proto.metadata_props}

    @functools.cached_property
    def spec(self) -> InputSpec:
        """The single image input; raises :class:`InputError` for other models."""
        return input_spec(self.proto)

    @functools.cached_property
    def precision(self) -> str:
        return model_precision(self.proto)

    @property
    def from_dcd_deploy(self) -> bool:
        """Written by ``dcd-deploy export``."""
        return self.proto.producer_name == "dcd-deploy"

    @property
    def has_external_data(self) -> bool:
        return any(i.data_location == onnx.TensorProto.EXTERNAL for i in self.proto.graph.initializer)


def _torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a file ``torch.save`` wrote (zip archive with a ``data.pkl``, or legacy pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
        if head.startswith(_TORCH_LEGACY_MAGIC):
            return True
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_onnx(path: str | os.PathLike) -> OnnxFile:
    """Parse the ONNX file at ``path`` (without external weights); raises :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"ONNX model {path} does not exist.", "Check the path, or write it with `dcd-deploy export`.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an ONNX file.", f"{_EXPORT_HINT}.")
    if _torch_checkpoint(path):
        raise InputError(f"{path} is a PyTorch checkpoint, not an ONNX model; did you swap the arguments?",
                         "Give the .onnx file first and the checkpoint second, e.g. "
                         "`dcd-deploy parity model.onnx checkpoint.pth`.")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__}).",
                         f"{_EXPORT_HINT}; the file may be truncated.") from None
    if not proto.graph.node:
        raise InputError(f"{path} holds no ONNX graph.", f"{_EXPORT_HINT}.")
    return OnnxFile(path, proto)


def onnx_input_size(source: str | os.PathLike | OnnxFile) -> tuple[int, int] | None:
    """The input size an ONNX file was exported for (metadata, else static H × W); None when unknown."""
    onnx_file = source if isinstance(source, OnnxFile) else read_onnx(source)
    try:
        return onnx_file.spec.input_size
    except InputError:
        return None
