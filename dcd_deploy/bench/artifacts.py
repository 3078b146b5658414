"""Each row's artifact, made once before anything is timed.

From a network (or :class:`~dcd_deploy.load.model.LoadedModel`): the original module (``eager``),
the lowered module (``eager-lowered``), the plain ``torch.onnx.export`` graph (``naive``), the
``dcd_deploy.export`` graph (``dcd-deploy``), with one batch size also the export for that batch
only (``dcd-deploy-batch``: static-batch forms, a batch-specific file) and the static twin's graph
(``static``), with calibration data also the int8 export (``int8``: factored form, static
convolutions quantized) and the static twin quantized the same way (``int8-static``), each with
its :class:`~dcd_deploy.exporting.int8check.Int8Check` against the float32 network it was
quantized from (:attr:`Prepared.int8`). A row whose
artifact cannot be made records why (:attr:`Prepared.failure`) instead of raising. From an ONNX
file: the file itself, shown as ``dcd-deploy`` when dcd-deploy wrote it, else ``onnx``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DcdDeployError
from ..exporting.pipeline import export
from ..load.model import LoadedModel
from ..lowering import lower_model
from ..lowering.static_twin import static_twin
from ..runtime.onnxfile import read_onnx
from ..runtime.timing import Progress
from .naive import naive_export
from .results import BATCH_ROW, INT8_ROWS, Prepared
from .settings import NAIVE_EXPORTERS

STEPS = 4  # progress steps of prepare_checkpoint_rows: lowering, naive export, dcd-deploy export, static export


def _made(row: str, make: Callable[[], dict[str, Any]]) -> Prepared:
    """``Prepared(row, **make())`` timed, or the failure when ``make`` raises a user-facing error."""
    t0 = time.perf_counter()
    try:
        made = make()
    except DcdDeployError as exc:
        return Prepared(row, failure=exc.message)
    return Prepared(row, seconds=time.perf_counter() - t0, **made)


def _lowered(original: nn.Module, hw: tuple[int, int]) -> dict[str, Any]:
    example = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    lowered, rewrite = lower_model(original, example)
    return {"model": lowered, "note": rewrite.summary()}


def _exported(model: nn.Module | LoadedModel, path: Path, hw: tuple[int, int], **options: Any) -> tuple[bytes, Any]:
    result = export(model, path, input_size=hw, **{"batch": None, **options})
    return result.path.read_bytes(), result


def _dcd_deploy(model: nn.Module | LoadedModel, folder: Path, hw: tuple[int, int], target: str,
                batch: int | None = None) -> dict[str, Any]:
    name = "dcd-deploy.onnx" if batch is None else f"dcd-deploy-b{batch}.onnx"
    data, result = _exported(model, folder / name, hw, target=target, batch=batch)
    batch_note = f"; batch {batch} only" if batch is not None else ""
    return {"onnx": data, "note": f"{result.report.summary()}; {result.node_count} nodes; target {target}{batch_note}"}


def _twin_example(hw: tuple[int, int]) -> torch.Tensor:
    """An input for the families that find their layers by running the network (``generic``)."""
    return torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))


def _static(original: nn.Module, folder: Path, hw: tuple[int, int]) -> dict[str, Any]:
    data, result = _exported(static_twin(original, example=_twin_example(hw)), folder / "static.onnx", hw)
    return {"onnx": data, "note": f"{result.node_count} nodes"}


def _int8(model: nn.Module | LoadedModel, folder: Path, hw: tuple[int, int], calibration: np.ndarray,
          static: bool = False) -> dict[str, Any]:
    """The int8 export of ``model`` (of its static twin with ``static``) and its int8 check against
    the float32 network it was quantized from, on shifted calibration samples."""
    from ..exporting.stages import int8_self_check

    original = model.model if isinstance(model, LoadedModel) else model
    network = static_twin(original, example=_twin_example(hw)) if static else model
    name = "int8-static.onnx" if static else "int8.onnx"
    data, result = _exported(network, folder / name, hw, int8=True, calibration=calibration, self_check=False)
    check = int8_self_check(data, network if static else original, calibration)
    return {"onnx": data, "int8": check, "note": f"{result.node_count} nodes; {check.summary()}"}


def prepare_checkpoint_rows(model: nn.Module | LoadedModel, hw: tuple[int, int], naive_exporter: str = "auto",
                            progress: Progress | None = None, onnx_rows: bool = True, torch_rows: bool = True,
                            target: str = "cpu", static_batch: int | None = None,
                            calibration: np.ndarray | None = None) -> list[Prepared]:
    """The artifacts of the five rows (six with ``static_batch``, the one batch size of the run: its
    ``dcd-deploy-batch`` row; two more with ``calibration``, N×3×H×W samples: the int8 rows), each
    made once (failures recorded, not raised).

    ``onnx_rows`` / ``torch_rows`` False: no requested provider can run those rows, so their
    artifacts are not made (exporting can take minutes).
    """
    report = progress or (lambda stage, done, total, detail: None)
    int8_steps = 0 if calibration is None else len(INT8_ROWS)
    steps = STEPS + (static_batch is not None) + int8_steps
    original = model.model if isinstance(model, LoadedModel) else model
    original.eval()
    prepared = [Prepared("eager", model=original, seconds=0.0)]
    if not torch_rows:
        prepared.append(Prepared("eager-lowered", note="not made: PyTorch cannot run on any requested provider here"))
    else:
        report("preparing", 0, STEPS, "eager-lowered: lowering the DCD layers")
        prepared.append(_made("eager-lowered", lambda: _lowered(original, hw)))
    if not onnx_rows:
        not_made = "not made: no requested provider runs ONNX Runtime here"
        rows = ("naive", "dcd-deploy") + ((BATCH_ROW,) if static_batch is not None else ()) + ("static",)
        rows += INT8_ROWS if calibration is not None else ()
        return prepared + [Prepared(row, note=not_made) for row in rows]

    dynamo_hint = " (torch.export can take minutes)" if "dynamo" in NAIVE_EXPORTERS[naive_exporter] else ""
    report("preparing", 1, steps, f"naive: plain torch.onnx.export{dynamo_hint}")
    t0 = time.perf_counter()
    data, note, failure = naive_export(original, hw, NAIVE_EXPORTERS[naive_exporter])
    prepared.append(Prepared("naive", onnx=data, seconds=time.perf_counter() - t0, note=note, failure=failure))
    with tempfile.TemporaryDirectory(prefix="dcd-bench-") as tmp:
        report("preparing", 2, steps, f"dcd-deploy: export (target {target})")
        prepared.append(_made("dcd-deploy", lambda: _dcd_deploy(model, Path(tmp), hw, target)))
        if static_batch is not None:
            report("preparing", 3, steps, f"{BATCH_ROW}: export for batch {static_batch} only")
            prepared.append(_made(BATCH_ROW, lambda: _dcd_deploy(model, Path(tmp), hw, target, static_batch)))
        report("preparing", steps - 1 - int8_steps, steps, "static: static twin export")
        prepared.append(_made("static", lambda: _static(original, Path(tmp), hw)))
        if calibration is not None:
            for i, (row, static) in enumerate(zip(INT8_ROWS, (False, True))):
                report("preparing", steps - int8_steps + i, steps, f"{row}: int8 export, {len(calibration)} calibration samples")
                prepared.append(_made(row, lambda static=static: _int8(model, Path(tmp), hw, calibration, static)))
    report("preparing", steps, steps, "")
    return prepared


def prepare_onnx_row(path: str | os.PathLike) -> tuple[Prepared, str, tuple[int, int] | None]:
    """The given file's row, the model name to show and the input size it was exported for (None: unknown).

    Raises :class:`~dcd_deploy.errors.InputError` when the file is not a readable ONNX model.
    """
    onnx_file = read_onnx(path)
    arch = onnx_file.metadata.get("dcd_deploy.arch")
    name = onnx_file.path.name + (f" ({arch})" if arch else "")
    try:
        size = onnx_file.spec.input_size
    except DcdDeployError:
        size = None  # the runners say what does not fit
    row = "dcd-deploy" if onnx_file.from_dcd_deploy else "onnx"
    return Prepared(row, onnx=os.fspath(path), seconds=0.0, note="given ONNX file"), name, size


__all__ = ["STEPS", "prepare_checkpoint_rows", "prepare_onnx_row"]
