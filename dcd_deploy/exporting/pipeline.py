"""Export a DCD network to ONNX as named stages (see :mod:`dcd_deploy.exporting.stages`).

validate → lower → trace → simplify → convert (float16) → stamp metadata → quantize (int8) → check graph rules →
self-check → write. The output file appears only when every stage passed: it is written under a
temporary name beside the target and renamed at the end, so a failure or Ctrl-C never leaves a
file behind (unless ``keep_failed`` asks for the graph that failed its self-check).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from ..errors import SelfCheckFailed  # noqa: F401 - where callers of the pipeline look for it
from ..load.model import LoadedModel
from ..runtime.inputs import IMAGENET_MEAN, IMAGENET_STD
from . import stages
from .fp16 import to_fp16  # noqa: F401 - the float16 conversion, for callers of the pipeline
from .graphcheck import op_histogram
from .options import DEFAULT_OPSET, ExportOptions, validate
from .result import SELF_CHECK_RTOL, ExportResult, SelfCheck  # noqa: F401 - part of the export API
from .stages import simplify  # noqa: F401 - the onnxsim stage, for callers of the pipeline


class _Clock:
    """Seconds per stage, keyed ``<stage>_s``, and the total."""

    def __init__(self, options: ExportOptions):
        self.options, self.start, self.timings = options, time.perf_counter(), {}

    def stage(self, key: str, message: str) -> None:
        self.options.stage(message)
        self.key, self.began = key, time.perf_counter()

    def done(self) -> None:
        self.timings[f"{self.key}_s"] = time.perf_counter() - self.began

    def total(self) -> dict[str, float]:
        return {**self.timings, "total_s": time.perf_counter() - self.start}


def run_export(model: nn.Module | LoadedModel, options: ExportOptions) -> ExportResult:
    """Run every stage of an export of ``model`` with ``options``; see :func:`export`."""
    validate(options)
    calibration = stages.calibration_data(options)  # int8: read and checked before any work
    network = model.model if isinstance(model, LoadedModel) else model
    network = network.eval()
    if isinstance(model, LoadedModel):
        options.stage(f"network: {model.describe()}")
        for note in model.notes:
            options.stage(f"  inferred {note}")
    clock, notes = _Clock(options), []
    clock.stage("lower", "lowering dynamic layers")
    lowered, report = stages.lower(network, options)
    clock.done()
    clock.stage("torch_onnx", "exporting ONNX")
    graph = stages.trace(lowered, options)
    clock.done()
    if options.simplify:
        clock.stage("simplify", "simplifying with onnxsim")
        graph, why = stages.simplify(graph)
        notes += [why] if why else []
        clock.done()
    if options.fp16:
        clock.stage("convert", "converting to float16")
        graph = stages.convert(graph, options)
        clock.done()
    meta = stages.metadata(model, options, report)
    graph = stages.stamp(graph, meta)
    if calibration is not None:
        clock.stage("quantize", f"quantizing to int8 ({options.calibration_method} calibration on {len(calibration)} samples)")
        graph = stages.quantize(graph, calibration, options)
        meta = {p.key: p.value for p in graph.metadata_props}
        clock.done()
    clock.stage("check", "checking the graph")
    stages.check_graph(graph, options, report)
    data = graph.SerializeToString()
    clock.done()
    check = None
    if options.self_check:
        clock.stage("self_check", "self-check on ONNX Runtime CPU")
        check = (stages.self_check(data, network, options) if calibration is None
                 else stages.int8_self_check(data, network, calibration))
        clock.done()
    clock.stage("write", f"writing {options.path}")
    path = stages.write(data, check, options)
    clock.done()
    result = ExportResult(path, report, meta, check, op_histogram(graph), clock.total(), notes)
    if options.report is not None:
        result.write_json(options.report)
    return result


def export(
    model: nn.Module | LoadedModel,
    path: str | os.PathLike,
    input_size: int | tuple[int, int] = 224,
    batch: int | None = None,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    do_simplify: bool = True,
    form: str | Callable = "auto",
    target: str = "cpu",
    self_check: bool = True,
    keep_failed: bool = False,
    allow_unlowered: bool = False,
    metadata: dict[str, Any] | None = None,
    on_stage: Callable[[str], None] | None = None,
    progress: bool = False,
    report: str | os.PathLike | None = None,
    int8: bool = False,
    calibration: str | os.PathLike | np.ndarray | None = None,
    calibration_method: str = "minmax",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ExportResult:
    """Lower ``model``'s dynamic layers and write an ONNX file to ``path``; returns what was done.

    ``model`` is any ``nn.Module`` containing DCD layers (or a :class:`LoadedModel`, whose
    architecture and checkpoint hash go into the metadata). ``batch=None`` makes the batch axis
    dynamic; ``dynamic_size`` also makes H and W dynamic. ``form='auto'`` picks each layer's lowered
    form with the cost model of ``target`` ('cpu': ONNX Runtime's CPU provider, 'cuda': its CUDA
    provider, where kernel launches dominate); a callable (see :mod:`dcd_deploy.exporting.tuning`)
    measures. ``report`` also writes the result as JSON. Every option is checked before any work
    (:class:`InputError`, :class:`OutputError`). Raises :class:`LoweringError` when a layer that looks
    dynamic could not be lowered (unless ``allow_unlowered``), :class:`ExportFailed` when torch.onnx
    fails (its output is in the log file the message names) and :class:`SelfCheckFailed` when ONNX
    Runtime disagrees with the original model.

    ``int8`` quantizes the static convolutions (see :mod:`dcd_deploy.exporting.quantize`), calibrated
    on ``calibration`` (an N×3×H×W array, an ``.npz``/``.npy`` file, or an image folder normalised
    with ``mean``/``std``) with ``calibration_method`` ('minmax', 'entropy' or 'percentile'); the
    self-check is then the accuracy-style :class:`~dcd_deploy.exporting.int8check.Int8Check`.
    """
    options = ExportOptions(path, input_size=input_size, batch=batch, dynamic_size=dynamic_size, opset=opset,
                            fp16=fp16, simplify=do_simplify, form=form, target=target, self_check=self_check,
                            keep_failed=keep_failed, allow_unlowered=allow_unlowered, metadata=metadata,
                            report=report, on_stage=on_stage, progress=progress, int8=int8, calibration=calibration,
                            calibration_method=calibration_method, mean=tuple(mean), std=tuple(std))
    return run_export(model, options)
