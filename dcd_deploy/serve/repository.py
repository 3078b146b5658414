"""A Triton Inference Server model repository for one exported graph (ONNX Runtime backend).

``DIR/NAME/config.pbtxt`` is a ``ModelConfig`` protobuf message (Triton's own schema, as
``tritonclient`` ships it) printed with protobuf's text format; ``DIR/NAME/1/model.onnx`` is the file.
Everything in the config is read from the file:

* inputs and outputs: names, data types and dims as the graph declares them (-1 for a dynamic axis);
* a dynamic first axis on every input and output (what ``dcd-deploy export`` writes by default):
  ``max_batch_size`` = ``--max-batch``, dims without the batch axis, and ``dynamic_batching``;
  a fixed first axis: ``max_batch_size: 0``, full dims, no dynamic batcher (Triton would send batches
  the file cannot take), and ``--max-batch`` is refused;
* ``instance_group``: ``--instances`` copies on the CPU or the GPUs;
* ``model_warmup``: one random request of batch 1 at the size the file was exported for (left out
  when a dimension is unknown, so that no warm-up sends a shape the file refuses).

Nothing is added that the file cannot honour: no CUDA graphs (Triton applies them to TensorRT
models, and a graph with control flow, Loop/If/Scan, cannot be captured) and no TensorRT
accelerator (its engine would be a different computation than the one parity checked).
The repository is written into a temporary folder and renamed into place: a failing run leaves
no half-finished model folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from ..errors import InputError, OutputError
from ..reporting import umask_mode
from ..runtime.onnxfile import CONTROL_FLOW, read_onnx

TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT64: "TYPE_INT64",
                onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT8: "TYPE_INT8",
                onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL"}
DEFAULT_MAX_BATCH = 16
DEFAULT_QUEUE_DELAY_US = 2000
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def model_config_pb2():
    """Triton's ``model_config_pb2`` module, as ``tritonclient`` ships it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise InputError(f"Triton's ModelConfig schema is not importable ({exc}).",
                         "Install the serving extras: pip install 'dcd-deploy[serve]'.") from None
    return model_config_pb2


def _tensors(model: onnx.ModelProto, inputs: bool) -> list[tuple[str, int, list[int]]]:
    initializers = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] if inputs else list(model.graph.output)
    out = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in TRITON_TYPES:
            raise InputError(f"Tensor {v.name!r} has type {onnx.TensorProto.DataType.Name(t.elem_type)}, which Triton's "
                             "ONNX Runtime backend cannot carry here.", "Use a file written by `dcd-deploy export`.")
        out.append((v.name, t.elem_type, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                                          for d in t.shape.dim]))
    return out


def control_flow_ops(model: onnx.ModelProto) -> list[str]:
    """The control-flow operator types of the file's main graph (a Loop's body holds none without the Loop)."""
    return sorted({n.op_type for n in model.graph.node if n.op_type in CONTROL_FLOW})


def _warmup(mc, config, inputs: list[tuple[str, int, list[int]]], size: tuple[int, int] | None) -> None:
    warm = mc.ModelWarmup(name="random_sample", batch_size=1)
    for name, elem, dims in inputs:
        dims = dims[1:] if config.max_batch_size > 0 else dims
        if config.max_batch_size == 0 and dims and dims[0] == -1:
            return
        if size is not None and len(dims) >= 3 and dims[-2:] == [-1, -1]:
            dims = dims[:-2] + list(size)
        if any(d < 1 for d in dims):
            return  # a dimension nobody knows: no warm-up rather than one the file refuses
        warm.inputs[name].CopyFrom(mc.ModelWarmup.Input(data_type=TRITON_TYPES[elem], dims=dims, random_data=True))
    config.model_warmup.append(warm)


def build_config(model_path: str | os.PathLike, name: str | None = None, max_batch: int | None = None,
                 instances: int = 1, device: str = "cpu", queue_delay_us: int = DEFAULT_QUEUE_DELAY_US):
    """The ``ModelConfig`` message for the ONNX file at ``model_path``; raises :class:`InputError`."""
    mc = model_config_pb2()
    onnx_file = read_onnx(model_path)
    name = name or Path(model_path).stem
    if not _NAME.match(name):
        raise InputError(f"{name!r} is not a Triton model name.", "Use letters, digits, '_', '.' and '-' (--name).")
    if device not in ("cpu", "gpu") or instances < 1:
        raise InputError(f"--device {device} --instances {instances} is not a placement.", "Use --device cpu|gpu, --instances >= 1.")
    inputs, outputs = _tensors(onnx_file.proto, True), _tensors(onnx_file.proto, False)
    batching = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
    if not batching and max_batch is not None:
        fixed = inputs[0][2][0] if inputs and inputs[0][2] else "none"
        raise InputError(f"{model_path} has a fixed batch axis (batch {fixed}), so Triton cannot batch it; --max-batch "
                         "does not apply.", "Leave --max-batch out, or export with a dynamic batch (the default of "
                         "`dcd-deploy export`).")
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", backend="onnxruntime",
                            max_batch_size=(max_batch or DEFAULT_MAX_BATCH) if batching else 0)
    for tensors, field in ((inputs, config.input), (outputs, config.output)):
        for tensor_name, elem, dims in tensors:
            field.add(name=tensor_name, data_type=TRITON_TYPES[elem], dims=dims[1:] if batching else dims)
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    kind = mc.ModelInstanceGroup.KIND_GPU if device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(name=f"{name}_{device}", count=instances, kind=kind)
    try:
        size = onnx_file.spec.input_size
    except InputError:
        size = None
    _warmup(mc, config, inputs, size)
    return config


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def write_repository(model_path: str | os.PathLike, directory: str | os.PathLike, name: str | None = None,
                     max_batch: int | None = None, instances: int = 1, device: str = "cpu") -> Path:
    """Write ``DIRECTORY/NAME/config.pbtxt`` and ``DIRECTORY/NAME/1/model.onnx``; returns the model folder."""
    config = build_config(model_path, name, max_batch, instances, device)
    if read_onnx(model_path).has_external_data:
        raise InputError(f"{model_path} keeps its weights in external data files.",
                         "Export it as one file (models under 2 GB are written that way by `dcd-deploy export`).")
    root = Path(directory)
    target = root / config.name
    if target.exists():
        raise OutputError(f"{target} already exists.", "Remove it, or choose another DIR or --name.")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{config.name}.", dir=root))
    except OSError as exc:
        raise OutputError(f"Cannot create the repository folder {root}: {exc.strerror or exc}.", "Choose a writable DIR.") from None
    try:
        (staging / "1").mkdir()
        shutil.copyfile(model_path, staging / "1" / "model.onnx")
        (staging / "config.pbtxt").write_text(config_text(config), encoding="utf-8")
        os.chmod(staging, umask_mode(0o777))  # mkdtemp makes it 0700
        os.rename(staging, target)
    except OSError as exc:
        raise OutputError(f"Cannot write the repository {target}: {exc.strerror or exc}.", "Choose a writable DIR.") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    root.rmdir()
    return target

