"""``--save-io``: the arrays a parity run compared, as ``.npy`` files a user can load and inspect.

The folder receives ``inputs.npy``, ``reference.<output>.npy``, ``<provider>.<output>.npy`` and a
``manifest.json`` mapping each to its file. The files are written into a temporary folder beside
the target and moved in only once all are complete, so an error or Ctrl-C leaves no partial set;
:meth:`SavedIO.remove` takes them back out when a later step of the run fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..reporting import umask_mode


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "output"


def check_save_io(folder: str | os.PathLike) -> Path:
    """Raise :class:`OutputError` now for a --save-io location that is a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"Cannot save inputs and outputs to {folder}: it is a file, not a folder.",
                          "Give a folder (created when missing) with --save-io.")
    return folder


@dataclasses.dataclass
class SavedIO:
    folder: Path
    files: dict[str, str]  # what -> file name inside the folder
    created: bool  # the folder did not exist before

    def paths(self) -> dict[str, str]:
        return {k: str(self.folder / v) for k, v in self.files.items()}

    def remove(self) -> None:
        """Take the saved files (and the folder, when this run created it) back out."""
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for name in [*self.files.values(), "manifest.json"]:
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()


def save_io(folder: str | os.PathLike, inputs: np.ndarray, names: list[str], reference: list[np.ndarray],
            per_provider: dict[str, list[np.ndarray]]) -> SavedIO:
    """Write the arrays into ``folder`` (created when missing) all together or not at all."""
    folder = check_save_io(folder)
    arrays = {"inputs": ("inputs.npy", inputs)}
    for name, ref in zip(names, reference):
        arrays[f"reference.{name}"] = (f"reference.{_safe(name)}.npy", ref)
    for prov, outs in per_provider.items():
        for name, out in zip(names, outs):
            arrays[f"{prov}.{name}"] = (f"{_safe(prov)}.{_safe(name)}.npy", out)
    files = {key: file for key, (file, _) in arrays.items()}
    created = not folder.exists()
    tmp = None
    try:
        folder.resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.resolve().parent))
        for file, array in arrays.values():
            np.save(tmp / file, array)
        (tmp / "manifest.json").write_text(json.dumps(files, indent=2) + "\n")
        if created:
            os.chmod(tmp, umask_mode(0o777))
            os.rename(tmp, folder)
            tmp = None
        else:
            for file in [*files.values(), "manifest.json"]:
                os.replace(tmp / file, folder / file)
    except OSError as exc:
        raise OutputError(f"Cannot save inputs and outputs to {folder}: {exc.strerror or exc}.",
                          "Choose a writable folder with --save-io.") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return SavedIO(folder, files, created)
