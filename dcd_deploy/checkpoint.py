"""Reading checkpoint files in the formats users actually have.

Formats recognised:

* the reference training format ``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}``
  whose keys carry DataParallel's ``module.`` prefix;
* ``{'state_dict': ...}`` or ``{'model': ...}`` with or without prefixes;
* a bare state dict;
* a whole pickled ``nn.Module`` (only with ``trust_pickle=True``: unpickling runs code).

Tensors are always read with ``torch.load(weights_only=True)`` first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
METADATA_KEYS = ("arch", "epoch", "best_prec1", "best_acc1")


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint file holds, cleaned up."""

    path: Path | None
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    module: nn.Module | None = None
    sha256: str | None = None

    @property
    def format(self) -> str:
        return self.metadata.get("format", "unknown")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP ``module.`` (and torch.compile ``_orig_mod.``) prefixes; keep tensors."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) for k in obj
    ) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def _summarise_metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in METADATA_KEYS:
        if key in raw:
            value = raw[key]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (str, int, float, bool)) or value is None:
                meta[key] = value
    if "optimizer" in raw:
        meta["has_optimizer_state"] = True
    return meta


def _not_a_checkpoint(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a PyTorch checkpoint dcd-deploy can read ({detail}).",
        "Pass the .pth/.pth.tar file written by torch.save during training: a dict with "
        "'state_dict' (the reference training script's format), a bare state dict, or "
        "{'model': state_dict}.",
    )


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Checkpoint:
    """Read ``path`` into a :class:`Checkpoint`, raising :class:`CheckpointError` with a fix."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint file {path} does not exist.", "Check the path and try again.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.", "Pass the checkpoint file itself.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file {path} is empty.", "Copy the checkpoint again; the file holds no data.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise _not_a_checkpoint(path, f"unpickling failed: {str(exc).splitlines()[0]}") from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors (most likely a whole pickled model), "
                "and loading them would run code from the file.",
                "If you trust its author, pass --trust-pickle (trust_pickle=True in Python); better, "
                "re-save it as torch.save({'state_dict': model.state_dict()}, path).",
            ) from None
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - anything unpickling raises is a bad file
            raise _not_a_checkpoint(path, f"{type(exc2).__name__}: {str(exc2).splitlines()[0] if str(exc2) else ''}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "failed finding central directory" in text or "EOF" in text or isinstance(exc, EOFError):
            raise CheckpointError(
                f"Checkpoint file {path} is truncated or corrupt ({text}).",
                "The download or copy was probably interrupted: copy the file again and compare its size or checksum.",
            ) from None
        raise _not_a_checkpoint(path, text) from None

    digest = sha256_of(path)
    if isinstance(raw, nn.Module):
        return Checkpoint(path, clean_state_dict(raw.state_dict()), {"format": "pickled module"}, raw, digest)
    if not isinstance(raw, Mapping):
        raise _not_a_checkpoint(path, f"it holds a {type(raw).__name__}")

    meta = _summarise_metadata(raw)
    for key in STATE_DICT_KEYS:
        if key in raw:
            inner = raw[key]
            if isinstance(inner, nn.Module):
                if not trust_pickle:  # pragma: no cover - weights_only=True cannot return modules
                    raise CheckpointError(f"{path}['{key}'] is a pickled module.", "Pass --trust-pickle.")
                meta["format"] = f"pickled module under '{key}'"
                return Checkpoint(path, clean_state_dict(inner.state_dict()), meta, inner, digest)
            if _is_state_dict(inner):
                prefixed = any(k.startswith("module.") for k in inner)
                meta["format"] = f"dict with '{key}'" + (" (DataParallel 'module.' prefixes)" if prefixed else "")
                if key == "state_dict" and "arch" in raw and prefixed:
                    meta["format"] = "reference training checkpoint"
                return Checkpoint(path, clean_state_dict(inner), meta, None, digest)
    if _is_state_dict(raw):
        prefixed = any(k.startswith("module.") for k in raw)
        meta["format"] = "bare state dict" + (" (DataParallel 'module.' prefixes)" if prefixed else "")
        return Checkpoint(path, clean_state_dict(raw), meta, None, digest)
    keys = ", ".join(map(repr, list(raw)[:8]))
    raise _not_a_checkpoint(path, f"a dict with keys {keys} but no state dict under {', '.join(STATE_DICT_KEYS)}")
