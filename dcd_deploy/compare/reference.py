"""The reference side of a parity check: the ORIGINAL PyTorch network and what it computes.

The reference is the network built from the checkpoint (not the lowered one), evaluated in
float64 by default (float32 on request, or with a note when the network cannot run in float64:
:mod:`dcd_deploy.runtime.float64`), and in float32 too, so the default tolerance can allow the
original's own float32 error (:func:`evaluate_reference`).
Before it runs, :func:`check_pairing` compares the ONNX file's export metadata with the
checkpoint, so a checkpoint of another network is a usage error rather than a parity failure.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError, summarize_exception
from ..load.model import LoadedModel, load_model
from ..runtime.float64 import Float64Unavailable, run_float64
from ..runtime.inputs import batches
from ..runtime.onnxfile import OnnxFile

REFERENCE_DTYPES = ("float32", "float64")  # None (the default): float64 where the network runs in it
# A checkpoint path, a loaded or plain network, or a function that loads one (called only after the
# ONNX file and the inputs have been checked, so the cheap checks fail first).
Reference = Union[str, os.PathLike, LoadedModel, nn.Module, Callable[[], LoadedModel | nn.Module]]
_PAIRING_FIX = ("Pass the checkpoint the ONNX file was exported from, or re-export it from this checkpoint with "
                "`dcd-deploy export`.")


def check_reference_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in REFERENCE_DTYPES:
        raise InputError(f"--reference {dtype} is not a reference precision.", "Use float32 or float64.")


def reference_model(reference: Reference, load_options: dict[str, Any] | None = None) -> tuple[LoadedModel | None, nn.Module]:
    """``(LoadedModel or None, network)`` from anything :data:`Reference` allows."""
    if callable(reference) and not isinstance(reference, nn.Module):
        reference = reference()
    if isinstance(reference, LoadedModel):
        return reference, reference.model
    if isinstance(reference, nn.Module):
        return None, reference
    loaded = load_model(reference, **(load_options or {}))
    return loaded, loaded.model


def reference_info(loaded: LoadedModel | None, module: nn.Module, dtype: str, onnx_file: OnnxFile,
                   noise: list[float] | None = None) -> dict[str, Any]:
    """What the reference was, for the report (``noise``: its float32 error against float64, per output)."""
    return {
        "dtype": dtype,
        "float32_error": noise,
        "arch": loaded.arch if loaded else type(module).__qualname__,
        "options": loaded.options if loaded else None,
        "checkpoint": str(loaded.checkpoint.path) if loaded and loaded.checkpoint.path else None,
        "checkpoint_sha256": loaded.checkpoint.sha256 if loaded else None,
        "onnx_metadata": {k: v for k, v in onnx_file.metadata.items() if k != "dcd_deploy.rewrite"},
    }


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    raise InputError(f"The PyTorch model returned a {type(out).__name__}, not tensors.",
                     "Its forward() must return a tensor (or a tuple of tensors) like the exported graph.")


def _evaluate(model: nn.Module, data: np.ndarray, batch: int, torch_dtype: torch.dtype) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start, stop in batches(len(data), batch):
            x = torch.from_numpy(np.ascontiguousarray(data[start:stop])).to(torch_dtype)
            chunks.append([o.detach().cpu().numpy() for o in _flatten(model(x))])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def run_reference(model: nn.Module, data: np.ndarray, batch: int, dtype: str) -> list[np.ndarray]:
    """The original model's outputs on ``data`` (float32 or float64), ``batch`` samples at a time.

    A float32 run that fails is an :class:`InputError` (the checkpoint does not fit the inputs); a
    float64 run that fails raises :class:`Float64Unavailable`.
    """
    if dtype == "float64":
        return run_float64(model, lambda twin: _evaluate(twin, data, batch, torch.float64))
    try:
        return _evaluate(model.eval(), data, batch, torch.float32)
    except RuntimeError as exc:
        shape = (min(batch, len(data)), *data.shape[1:])
        raise InputError(
            f"The PyTorch model from the checkpoint does not run on inputs of shape {shape}: "
            f"{summarize_exception(exc)}.",
            "The checkpoint does not match the ONNX model's input; pass the checkpoint it was exported from.",
        ) from None


@dataclasses.dataclass
class ReferenceRun:
    """The original's outputs in the reference precision, and its own float32 error per output."""

    dtype: str  # the precision ``outputs`` were evaluated in: float64, or float32
    outputs: list[np.ndarray]
    noise: list[float] | None  # per output: max|float32 − float64| / max|float64|; None without float64
    note: str | None = None  # why float64 was not used, when it was asked for by default


def evaluate_reference(model: nn.Module, data: np.ndarray, batch: int, dtype: str | None) -> ReferenceRun:
    """The original's outputs in ``dtype`` (``None``: float64, else float32 with a note) and, whenever it
    runs in float64, its float32 error against float64 (:class:`ReferenceRun`). An explicit ``float64``
    that cannot run is an :class:`InputError`; a failing float32 run is one anyway."""
    from ..lowering import relative_error

    out32 = run_reference(model, data, batch, "float32")
    try:
        out64 = run_reference(model, data, batch, "float64")
    except Float64Unavailable as why:
        if dtype == "float64":
            raise InputError(f"--reference float64: the original PyTorch network cannot be evaluated in float64: {why}.",
                             "Use --reference float32 (the default tolerances are then fixed).") from None
        note = None if dtype == "float32" else (
            f"the original PyTorch network was evaluated in float32 only, since {why}; the default tolerance is "
            "the fixed one, without the allowance for its own float32 error")
        return ReferenceRun("float32", out32, None, note)
    noise = [relative_error(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(out32, out64)]
    if dtype == "float32":
        return ReferenceRun("float32", out32, noise)
    return ReferenceRun("float64", out64, noise)


def check_pairing(meta: dict[str, str], loaded: LoadedModel | None) -> list[str]:
    """Raise InputError when the ONNX metadata names another network than the checkpoint builds.

    Returns notes, e.g. that the file was exported from another checkpoint of the same network.
    """
    if loaded is None:
        return []
    arch = meta.get("dcd_deploy.arch")
    registered = ":" not in loaded.arch
    if arch and registered and ":" not in arch and arch != loaded.arch:
        raise InputError(f"The ONNX model was exported from a {arch} network, but the checkpoint builds a "
                         f"{loaded.arch}.", _PAIRING_FIX)
    if arch == loaded.arch and registered and meta.get("dcd_deploy.arch_options"):
        try:
            exported = json.loads(meta["dcd_deploy.arch_options"])
        except ValueError:
            exported = {}
        differ = [f"{k}={exported[k]!r} in the ONNX file, {loaded.options[k]!r} in the checkpoint"
                  for k in sorted(set(exported) & set(loaded.options))
                  if k != "dropout" and exported[k] != loaded.options[k]]
        if differ:
            raise InputError(f"The ONNX model and the checkpoint are different {arch} networks ({'; '.join(differ)}).",
                             _PAIRING_FIX)
    recorded = meta.get("dcd_deploy.checkpoint_sha256")
    actual = loaded.checkpoint.sha256 if loaded.checkpoint is not None else None
    if recorded and actual and recorded != actual:
        name = meta.get("dcd_deploy.checkpoint") or "another file"
        return [f"the ONNX file was exported from a different checkpoint file ({name}, sha256 {recorded[:12]}…; "
                f"this one is {actual[:12]}…); the comparison shows whether they still compute the same"]
    return []


def check_outputs(names: list[str], outputs: list[np.ndarray], reference: list[np.ndarray]) -> None:
    """Raise InputError when the ONNX outputs are not those of the checkpoint's network (count, shapes)."""
    if len(outputs) != len(reference):
        raise InputError(f"The ONNX model has {len(outputs)} outputs ({', '.join(names)}) but the checkpoint's "
                         f"network returns {len(reference)}.", "Pass the checkpoint the ONNX file was exported from.")
    for name, o, r in zip(names, outputs, reference):
        if o.shape != r.shape:
            raise InputError(f"ONNX output {name!r} has shape {tuple(o.shape)} but the checkpoint's network gives "
                             f"{tuple(r.shape)}: they are not the same network.", _PAIRING_FIX)
