"""The reference side of a parity check: the ORIGINAL PyTorch network and what it computes.

The reference is the network built from the checkpoint (not the lowered one), evaluated in
float32 or, on request, float64. Before it runs, :func:`check_pairing` compares the ONNX file's
export metadata with the checkpoint, so a checkpoint of another network is a usage error rather
than a parity failure.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError, summarize_exception
from ..load.model import LoadedModel, load_model
from ..runtime.inputs import batches
from ..runtime.onnxfile import OnnxFile

REFERENCE_DTYPES = ("float32", "float64")
# A checkpoint path, a loaded or plain network, or a function that loads one (called only after the
# ONNX file and the inputs have been checked, so the cheap checks fail first).
Reference = Union[str, os.PathLike, LoadedModel, nn.Module, Callable[[], LoadedModel | nn.Module]]
_PAIRING_FIX = ("Pass the checkpoint the ONNX file was exported from, or re-export it from this checkpoint with "
                "`dcd-deploy export`.")


def check_reference_dtype(dtype: str) -> None:
    if dtype not in REFERENCE_DTYPES:
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


def reference_info(loaded: LoadedModel | None, module: nn.Module, dtype: str, onnx_file: OnnxFile) -> dict[str, Any]:
    """What the reference was, for the report."""
    return {
        "dtype": dtype,
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


def run_reference(model: nn.Module, data: np.ndarray, batch: int, dtype: str) -> list[np.ndarray]:
    """The original model's outputs on ``data`` (float32 or float64), ``batch`` samples at a time."""
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model = (copy.deepcopy(model).double() if dtype == "float64" else model).eval()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start, stop in batches(len(data), batch):
            x = torch.from_numpy(np.ascontiguousarray(data[start:stop])).to(torch_dtype)
            try:
                outs = _flatten(model(x))
            except RuntimeError as exc:
                raise InputError(
                    f"The PyTorch model from the checkpoint does not run on inputs of shape {tuple(x.shape)}: "
                    f"{summarize_exception(exc)}.",
                    "The checkpoint does not match the ONNX model's input; pass the checkpoint it was exported from.",
                ) from None
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


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
