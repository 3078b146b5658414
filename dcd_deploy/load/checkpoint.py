"""Reading checkpoint files in the formats users actually have.

Formats recognised:

* the reference training format ``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}``
  whose keys carry DataParallel's ``module.`` prefix;
* ``{'state_dict': ...}`` or ``{'model': ...}`` with or without prefixes;
* a bare state dict;
* a whole pickled ``nn.Module`` (only with ``trust_pickle=True``: unpickling runs code).

Tensors are always read with ``torch.load(weights_only=True)`` first. A file torch.save did not
write is named for what it is: a text file, an ONNX model given where the checkpoint belongs (the
arguments were probably swapped), a zip archive or pickle of something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, summarize_exception

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


def unwrap_module(module: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel wrappers (pickled whole while training)."""
    while isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        module = module.module
    return module


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


def _corrupt(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint file {path} is truncated or corrupt ({detail}).",
        "The download or copy was probably interrupted: copy the file again and compare its size or checksum.",
    )


# torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle stream that
# starts with a magic number (protocol 2: PROTO 2, LONG1 of 10 bytes).
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"
PICKLE_PROTO = 0x80


# An ONNX file is a protobuf ModelProto; its first field is ir_version (field 1, varint: tag 0x08).
ONNX_FIRST_TAG = b"\x08"


def _is_onnx_model(path: Path, head: bytes) -> bool:
    """Whether ``path`` parses as an ONNX model (an IR version, an opset and a graph); never raises."""
    if not head.startswith(ONNX_FIRST_TAG) and path.suffix.lower() != ".onnx":
        return False
    try:
        import onnx

        model = onnx.load_model(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - whatever fails to parse is not an ONNX model
        return False
    return model.ir_version > 0 and len(model.opset_import) > 0 and model.HasField("graph")


def _sniff(path: Path) -> str:
    """'zip', 'legacy' (torch.save's old format) or 'pickle'; raise for anything torch.save never writes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if head[:1] == bytes([PICKLE_PROTO]):
        return "pickle"
    if head.startswith(b"PK"):
        raise _corrupt(path, "the zip archive's first entry is damaged")
    if _is_onnx_model(path, head):
        raise CheckpointError(
            f"{path} is an ONNX model, not a PyTorch checkpoint; did you swap the arguments?",
            "Pass the .pth file written by torch.save during training here; the ONNX model goes first in "
            "`dcd-deploy parity MODEL.onnx CHECKPOINT`, and `dcd-deploy bench` times an ONNX model given by "
            "a name ending in .onnx.",
        )
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # 64 bytes may end inside a character
    if text and all(c.isprintable() and c != "\ufffd" or c in "\t\r\n" for c in text):
        what = f"it is a text file starting with {text.splitlines()[0][:40]!r}"
    else:
        what = f"it starts with bytes {head[:8].hex(' ')}, not the zip archive or pickle stream torch.save writes"
    raise _not_a_checkpoint(path, what)


def _unsafe_global(message: str) -> str | None:
    """The global a weights_only load refused, when that is why it failed (else None)."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return m.group(1).rstrip(".,") if m else None


def _read_error(path: Path, exc: BaseException, kind: str) -> CheckpointError:
    """Classify an exception raised by torch.load on a file of ``kind`` (see :func:`_sniff`)."""
    text = summarize_exception(exc, limit=200)
    full = str(exc)
    if isinstance(exc, PermissionError):
        return CheckpointError(f"Checkpoint file {path} cannot be read (permission denied).",
                               "Check the file's permissions, or copy it somewhere you can read.")
    if kind == "zip" and ("data.pkl" in full or "not in a subdirectory" in full):
        return _not_a_checkpoint(path, "it is a zip archive, but not one written by torch.save")
    if kind == "pickle" and not isinstance(exc, EOFError) and "truncated" not in full:
        # A pickle stream without torch.save's header: the safe unpickler stops at an unknown opcode.
        return _not_a_checkpoint(path, "it is a pickle, but not one written by torch.save")
    # A file that starts like torch.save output but cannot be read to the end.
    return _corrupt(path, "the data ends early" if isinstance(exc, EOFError) else text)


def _load_trusted(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise CheckpointError(
            f"{path} holds a pickled object whose class cannot be imported here ({summarize_exception(exc, limit=200)}).",
            "Unpickling a whole module needs the code that defined it: run from the project that saved it "
            "(or put it on PYTHONPATH); better, re-save it as torch.save({'state_dict': model.state_dict()}, path).",
        ) from None
    except Exception as exc:  # noqa: BLE001 - anything unpickling raises is a problem with the file
        raise _read_error(path, exc, _sniff(path)) from None


def _read(path: Path, trust_pickle: bool) -> Any:
    """What torch.save wrote to ``path``: tensors only unless ``trust_pickle``; CheckpointError otherwise."""
    if not path.exists():
        raise CheckpointError(f"Checkpoint file {path} does not exist.", "Check the path and try again.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.", "Pass the checkpoint file itself.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file {path} is empty.", "Copy the checkpoint again; the file holds no data.")
    try:
        kind = _sniff(path)
    except PermissionError as exc:
        raise _read_error(path, exc, "unknown") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _unsafe_global(str(exc))
        if refused is None:
            raise _read_error(path, exc, kind) from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors ({refused}; most likely a whole pickled model), "
                "and loading them would run code from the file.",
                "If you trust its author, pass --trust-pickle (trust_pickle=True in Python); better, "
                "re-save it as torch.save({'state_dict': model.state_dict()}, path).",
            ) from None
        return _load_trusted(path)
    except Exception as exc:  # noqa: BLE001 - torch.load failing on a user's file is a problem with the file
        raise _read_error(path, exc, kind) from None


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Checkpoint:
    """Read ``path`` into a :class:`Checkpoint`, raising :class:`CheckpointError` with a fix."""
    path = Path(path)
    raw = _read(path, trust_pickle)
    digest = sha256_of(path)
    if isinstance(raw, nn.Module):
        raw = unwrap_module(raw)
        meta = {"format": f"pickled module ({type(raw).__qualname__})"}
        return Checkpoint(path, clean_state_dict(raw.state_dict()), meta, raw, digest)
    if not isinstance(raw, Mapping):
        raise _not_a_checkpoint(path, f"it holds a {type(raw).__name__}")

    meta = _summarise_metadata(raw)
    for key in STATE_DICT_KEYS:
        if key in raw:
            inner = raw[key]
            if isinstance(inner, nn.Module):
                if not trust_pickle:  # pragma: no cover - weights_only=True cannot return modules
                    raise CheckpointError(f"{path}['{key}'] is a pickled module.", "Pass --trust-pickle.")
                inner = unwrap_module(inner)
                meta["format"] = f"pickled module ({type(inner).__qualname__}) under '{key}'"
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
