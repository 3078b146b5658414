"""Export a DCD network to ONNX: lower → torch.onnx → onnxsim → checks → self-check → write.

The output file appears only when every step passed (it is written next to the target under a
temporary name and renamed at the end), so a failed run never leaves a half-finished file,
unless ``keep_failed`` asks for the failing graph for debugging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..errors import DcdDeployError, InputError, LoweringError
from .graphcheck import batch_independent, conv_weights_are_constant, op_histogram
from ..load.model import LoadedModel
from ..lowering import RewriteReport, lower_model, relative_error
from ..lowering.costmodel import TARGETS

DEFAULT_OPSET = 17
# Self-check thresholds on max|ort − torch| / max|torch| against the ORIGINAL PyTorch model. Float16
# keeps an 11-bit mantissa (~5e-4 per rounding) and the error compounds over ~50 layers.
SELF_CHECK_RTOL = {"float32": 1e-4, "float16": 5e-2}


class SelfCheckFailed(DcdDeployError):
    exit_code = 1


@dataclasses.dataclass
class SelfCheck:
    errors: dict[int, float]  # batch size -> relative error
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        parts = ", ".join(f"batch {b}: {e:.2e}" for b, e in self.errors.items())
        verdict = "PASS" if self.passed else "FAIL"
        return f"self-check on ONNX Runtime CPU vs original PyTorch: max relative error {parts} (tolerance {self.tolerance:.0e}) {verdict}"


@dataclasses.dataclass
class ExportResult:
    path: Path
    report: RewriteReport
    metadata: dict[str, str]
    self_check: SelfCheck | None
    ops: dict[str, int]
    timings: dict[str, float]
    warnings: list[str]

    @property
    def node_count(self) -> int:
        return sum(self.ops.values())

    # The result reads as its rewrite report too: ``dcd_deploy.export(...)`` "returns the report".
    @property
    def layers(self):
        return self.report.layers

    def summary(self) -> str:
        return self.report.summary()

    def __bool__(self) -> bool:
        return bool(self.report) and (self.self_check is None or bool(self.self_check))


def _as_hw(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def _example(batch: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float16 weights and compute, float32 inputs and outputs (onnxconverter-common)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per weight below float16's smallest normal: noise
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnxsim, or the model unchanged with the reason when onnxsim fails or cannot verify."""
    try:
        import onnxsim

        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model)
        if not ok:
            return model, "onnxsim could not validate its result; kept the unsimplified graph"
        return simplified, None
    except Exception as exc:  # noqa: BLE001 - any onnxsim failure falls back to the raw graph
        return model, f"onnxsim failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); kept the unsimplified graph"


def run_self_check(onnx_bytes: bytes, original: nn.Module, hw: tuple[int, int], batches: list[int], precision: str) -> SelfCheck:
    from ..runtime.session import create_session

    session = create_session(onnx_bytes, "cpu")
    errors = {}
    for i, b in enumerate(batches):
        x = _example(b, hw, seed=100 + i)
        with torch.no_grad():
            ref = original(x)
        out = session.run(["logits"], {"input": x.numpy()})[0]
        errors[b] = relative_error(torch.from_numpy(np.asarray(out, dtype=np.float32)), ref)
    return SelfCheck(errors, SELF_CHECK_RTOL[precision])


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
) -> ExportResult:
    """Lower ``model``'s DCD layers and write an ONNX file to ``path``; returns what was done.

    ``model`` is any ``nn.Module`` containing DCD layers (or a :class:`LoadedModel`, whose
    architecture and checkpoint hash go into the metadata). ``batch=None`` makes the batch axis
    dynamic; ``dynamic_size`` also makes H and W dynamic. ``form='auto'`` picks each layer's lowered
    form with the cost model of ``target`` ('cpu': ONNX Runtime's CPU provider, 'cuda': its CUDA
    provider, where kernel launches dominate); a callable (see :mod:`dcd_deploy.tuning`) measures. Raises :class:`LoweringError` when a
    layer that looks dynamic could not be lowered (unless ``allow_unlowered``) and
    :class:`SelfCheckFailed` when ONNX Runtime disagrees with the original model.
    """
    stage = on_stage or (lambda s: None)
    path = Path(path)
    meta: dict[str, str] = {}
    if isinstance(model, LoadedModel):
        meta.update({
            "dcd_deploy.arch": model.arch,
            "dcd_deploy.arch_options": json.dumps(model.options, sort_keys=True),
            "dcd_deploy.checkpoint_sha256": model.checkpoint.sha256 or "",
            "dcd_deploy.checkpoint": model.checkpoint.path.name if model.checkpoint.path else "",
        })
        model = model.model
    model = model.eval()
    hw = _as_hw(input_size)
    if batch is not None and batch < 1:
        raise InputError(f"--batch {batch} is not a positive batch size.", "Omit --batch for a dynamic batch axis.")
    if not path.parent.exists():
        raise InputError(f"Output folder {path.parent} does not exist.", "Create it first or choose another -o path.")
    if path.is_dir():
        raise InputError(f"Output path {path} is a folder.", "Pass a file name, e.g. -o model.onnx.")
    if target not in TARGETS:
        raise InputError(f"Unknown target {target!r}.", f"Choose one of: {', '.join(TARGETS)}.")
    precision = "float16" if fp16 else "float32"
    timings: dict[str, float] = {}
    notes: list[str] = []

    t0 = time.perf_counter()
    stage("lowering dynamic layers")
    example = _example(batch or 1, hw)
    lowered, report = lower_model(model, example, choose_form=form, dynamic_size=dynamic_size, target=target,
                                   progress=progress)
    timings["lower_s"] = time.perf_counter() - t0
    if report.not_lowered and not allow_unlowered:
        details = "; ".join(f"{layer.path}: {layer.reason}" for layer in report.not_lowered)
        raise LoweringError(
            f"{len(report.not_lowered)} layer(s) look dynamic but were not lowered, so the export would not be "
            f"what you expect ({details}).",
            "Fix the layer to match the DCD reference structure, or pass --allow-unlowered to export those layers "
            "as they are (slower, and they may not export at all).",
        )

    stage("exporting ONNX")
    t = time.perf_counter()
    dynamic_axes = None
    if batch is None or dynamic_size:
        axes = {} if batch is not None else {0: "batch"}
        if dynamic_size:
            axes.update({2: "height", 3: "width"})
        dynamic_axes = {"input": axes, "logits": {0: "batch"} if batch is None else {}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(lowered, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 - exporter errors become one clear message
            raise LoweringError(
                f"torch.onnx could not export the lowered network: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}.",
                "If the network has layers dcd-deploy does not lower (see the rewrite report), they may not be "
                "exportable; report the model structure to the dcd-deploy maintainers.",
            ) from None
    graph = onnx.load_from_string(buffer.getvalue())
    timings["torch_onnx_s"] = time.perf_counter() - t

    if do_simplify:
        stage("simplifying with onnxsim")
        t = time.perf_counter()
        graph, why = simplify(graph)
        if why:
            notes.append(why)
        timings["simplify_s"] = time.perf_counter() - t
    if fp16:
        stage("converting to float16")
        graph = to_fp16(graph)

    meta.update({
        "dcd_deploy.version": __version__,
        "dcd_deploy.input_size": f"{hw[0]}x{hw[1]}",
        "dcd_deploy.dynamic_batch": str(batch is None).lower(),
        "dcd_deploy.dynamic_size": str(dynamic_size).lower(),
        "dcd_deploy.precision": precision,
        "dcd_deploy.target": target,
        "dcd_deploy.rewrite": json.dumps({"summary": report.summary(),
                                          "layers": [{"path": l.path, "kind": l.kind, "form": l.form,
                                                      "folded_bn": l.folded_bn, "lowered": l.lowered}
                                                     for l in report.layers]}),
    })
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name = "dcd-deploy"
    graph.producer_version = __version__

    stage("checking the graph")
    onnx.checker.check_model(graph, full_check=True)
    problems = [f"Conv {n} takes a computed weight" for n in conv_weights_are_constant(graph)]
    problems += batch_independent(graph, batch)
    if problems:
        raise LoweringError("The exported graph breaks dcd-deploy's graph rules: " + "; ".join(problems) + ".",
                            "This is a dcd-deploy bug; please report it with the model.")
    data = graph.SerializeToString()

    check = None
    if self_check:
        stage("self-check on ONNX Runtime CPU")
        t = time.perf_counter()
        batches = [batch] if batch is not None else [1, 3]
        check = run_self_check(data, model, hw, batches, precision)
        timings["self_check_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    result = ExportResult(path, report, meta, check, op_histogram(graph), timings, notes)
    if check is not None and not check:
        if keep_failed:
            os.replace(tmp, path)
            kept = f" The failing graph was kept at {path} (--keep-failed)."
        else:
            os.unlink(tmp)
            kept = " No file was written."
        raise SelfCheckFailed(
            f"The exported model does not match the original: {check.summary()}.{kept}",
            "Run `dcd-deploy parity --localize` on a --keep-failed export to find the first diverging layer.",
        )
    os.replace(tmp, path)
    return result
