"""The served model: one ONNX Runtime session and the tensors the file declares.

Reads the file with :func:`dcd_deploy.runtime.onnxfile.read_onnx` and opens the session with
:func:`dcd_deploy.runtime.session.create_session` (thread spinning off: a server sits idle between
requests), so a bad file or a missing provider fails with the project's usual errors. The batch
axis is the first one; a file with a fixed first axis serves exactly that batch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runtime.onnxfile import read_onnx
from ..runtime.session import create_session, parse_providers

# OIP (KServe v2 / Triton) tensor data types of the numpy dtypes an exported graph uses.
OIP_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.float64): "FP64",
                 np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.int8): "INT8",
                 np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL"}
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, numpy dtype and shape (-1 for a dynamic axis, the batch one included)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return OIP_DATATYPES[self.dtype]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg) -> TensorSpec:
    dtype = ORT_TYPES.get(arg.type)
    if dtype is None:
        raise InputError(f"The model's tensor {arg.name!r} has type {arg.type}, which the server cannot carry.",
                         "Serve a model written by `dcd-deploy export` (float inputs and outputs).")
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, np.dtype(dtype), shape)


def single_provider(spec: str) -> str:
    """``--providers`` for a server: exactly one provider (ONNX Runtime's CPU stays the fallback for ops it lacks)."""
    names = parse_providers(spec)
    if len(names) != 1:
        raise InputError(f"--providers {spec!r} names {len(names)} providers; a server runs one session.",
                         "Pass one: --providers cpu or --providers cuda.")
    return names[0]


class ServedModel:
    """An ONNX file ready to serve: ``run(batch)`` → outputs, ``inputs``/``outputs`` specs, OIP metadata."""

    def __init__(self, path: str | os.PathLike, name: str | None = None, provider: str = "cpu",
                 threads: int | None = None, max_batch: int = 16):
        onnx_file = read_onnx(path)
        self.path = Path(path)
        self.name = name or self.path.stem
        self.precision = onnx_file.precision
        self.provider = single_provider(provider)
        self.session = create_session(self.path, self.provider, threads=threads, spinning=False)
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        if len(self.inputs) != 1:
            raise InputError(f"{self.path} has {len(self.inputs)} inputs; the server batches single-input models.",
                             "Serve a model written by `dcd-deploy export` (one N×C×H×W input).")
        first = self.inputs[0].shape[0] if self.inputs[0].shape else -1
        self.fixed_batch = first if first > 0 else None
        if self.fixed_batch is not None and max_batch != self.fixed_batch:
            max_batch = self.fixed_batch  # the file decides: it takes exactly that batch
        self.max_batch = max_batch
        self.parameters: dict = {}  # more metadata parameters (the Ray deployment adds its node)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """All outputs for ``batch`` (its first axis is the batch axis)."""
        return self.session.run([o.name for o in self.outputs], {self.input.name: batch})

    def metadata(self) -> dict:
        """The OIP model metadata response."""
        return {"name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs],
                "parameters": {"max_batch_size": self.max_batch, "precision": self.precision,
                               "provider": self.provider, **self.parameters}}
