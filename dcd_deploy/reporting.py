"""Writing results for people and programs: JSON-safe values, plain-text tables, output files.

* :func:`json_safe` turns a result's ``to_dict()`` into values JSON can hold (NaN and ±Inf become
  ``null``, NumPy scalars and arrays Python ones, paths strings); :func:`to_json` dumps it.
* :func:`table` lays out rows of strings in aligned columns under a header and a rule.
* :func:`write_output` writes a file the user asked for as a whole or not at all: the text goes to
  a temporary file beside the target, which replaces the target only once complete, so an error or
  Ctrl-C never leaves a half-written file. The file's mode follows the umask like any file the user
  writes (0644 under umask 022). An unwritable path raises :class:`OutputError`.
* :func:`check_output_path` rejects an unwritable location before a long run starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError


def json_safe(obj: Any) -> Any:
    """``obj`` with every value JSON can hold: non-finite floats become None, NumPy values Python ones."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def to_json(obj: Any) -> str:
    """Indented JSON text of :func:`json_safe` ``(obj)``, ending with a newline."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None, rule: bool = True) -> str:
    """Columns padded to their widest cell, a dashed rule under the header (unless ``rule`` is False);
    ``align`` is one ``l`` or ``r`` per column (default: all left)."""
    widths = [max(len(r[i]) for r in [header, *rows] if i < len(r)) for i in range(len(header))]
    align = align or "l" * len(header)

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *([line(["-" * w for w in widths])] if rule else []), *(line(r) for r in rows)])


def _check_location(path: Path, what: str) -> None:
    """The folder exists and ``path`` is (or can become) a regular file; no write is tried."""
    fix = f"Choose another path for the {what}, in a folder you can write to."
    if path.is_dir():
        raise OutputError(f"Cannot write the {what} to {path}: it is a folder, not a file name.",
                          f"Give a file name, e.g. {path / 'out'}.")
    if path.exists() and not path.is_file():
        raise OutputError(f"Cannot write the {what} to {path}: it exists and is not a regular file "
                          "(a device, a socket or a pipe).", fix)
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"Cannot write the {what} to {path}: folder {folder} does not exist.",
                          f"Create it first (mkdir -p {folder}) or choose another path.")
    if not folder.is_dir():
        raise OutputError(f"Cannot write the {what} to {path}: {folder} is a file, not a folder.", fix)


def check_output_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`Path` if the ``what`` (e.g. "-o model", "--json report") can be written
    there; else :class:`OutputError`, now, before a long run starts.

    Tries for real (creates and removes an empty temporary file in the folder): permission bits say
    nothing about a read-only mount or ``/proc``, and nothing to root.
    """
    path = Path(path)
    _check_location(path, what)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"Cannot write the {what} to {path}: {exc.strerror or exc} (creating a file in "
                          f"{path.parent} failed).", f"Choose another path for the {what}, in a folder you can write to.") from None
    os.close(fd)
    os.unlink(probe)
    return path


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process's umask: the mode ``open``/``mkdir`` would give a new file/folder."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def write_output(path: str | os.PathLike, data: str | bytes, what: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically, with the mode the umask gives new files."""
    path = Path(path)
    _check_location(path, what)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"Cannot write the {what} to {path}: {exc.strerror or exc}.",
                         "Choose a writable path.") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path
