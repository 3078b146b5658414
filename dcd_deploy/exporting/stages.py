"""The stages of an export, each a function of its inputs that can be run and tested alone.

:func:`dcd_deploy.exporting.options.validate` → :func:`lower` → :func:`trace` → :func:`simplify`
→ :func:`convert` → :func:`stamp` → :func:`quantize` (int8, with the samples of
:func:`calibration_data`, read first) → :func:`check_graph` → :func:`self_check` (int8:
:func:`int8_self_check`) → :func:`write`;
:func:`dcd_deploy.exporting.pipeline.run_export` runs them in that order.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..errors import ExportFailed, InputError, LoweringError, SelfCheckFailed, raise_if_interrupted, summarize_exception
from ..lowering import RewriteReport, lower_model, relative_error
from ..lowering.computed_weights import computed_weight_modules
from ..lowering.family import trace_batch
from .graphcheck import batch_independent, batch_specific_metadata, conv_weights_are_constant
from .int8check import Int8Check
from .options import ExportOptions
from .quiet import quiet
from .result import SELF_CHECK_RTOL, SelfCheck

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def example_input(batch: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A seeded N×3×H×W normal sample."""
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))


def int8_runs_channels_last(model: nn.Module) -> bool:
    """Whether an int8 export of ``model`` lowers channels-last: networks without grouped (depthwise)
    convolutions, where the int8 chain keeps every map in ONNX Runtime's NHWC int8 layout (with
    float32 depthwise islands the pools would read float maps that a transpose must reorder)."""
    return not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def lower(model: nn.Module, options: ExportOptions) -> tuple[nn.Module, RewriteReport]:
    """Rewrite the dynamic layers; :class:`LoweringError` when one that looks dynamic was not lowered
    (unless ``allow_unlowered``)."""
    example = example_input(options.batch or 1, options.hw)
    # static-shape forms need a fixed batch and size; int8 quantizes constant Conv weights only
    static_batch = None if options.dynamic_size or options.int8 else options.batch
    lowered, report = lower_model(model, example, choose_form=options.lowering_form, dynamic_size=options.dynamic_size,
                                  target=options.target, progress=options.progress, static_batch=static_batch,
                                  channels_last=options.int8 and int8_runs_channels_last(model))
    unknown = {} if options.allow_unlowered else computed_weight_modules(
        model, example_input(2, options.hw), [layer.path for layer in report.layers])
    if (report.not_lowered or unknown) and not options.allow_unlowered:
        by_reason: dict[str, list[str]] = {}  # one reason shared by many layers is said once
        for path, why in [(layer.path, layer.reason) for layer in report.not_lowered] + list(unknown.items()):
            by_reason.setdefault(why, []).append(path or "<root>")
        details = "; ".join(f"{', '.join(paths)}: {why}" for why, paths in by_reason.items())
        raise LoweringError(
            f"{len(report.not_lowered) + len(unknown)} layer(s) look dynamic but were not lowered, so the export would not be "
            f"what you expect ({details}).",
            "Fix the layer to match the published structure (a dynamic convolution of another design exports when "
            "it ends in one batch-folded grouped convolution: F.conv2d(x.reshape(1, N*C, H, W), w, groups=N*g), "
            "see the README's supported layers), or pass --allow-unlowered to export those layers "
            "as they are (slower, and they may not export at all).",
        )
    return lowered, report


def dynamic_axes(options: ExportOptions) -> dict[str, dict[int, str]] | None:
    """torch.onnx's ``dynamic_axes``: the batch unless it is static, H and W with ``dynamic_size``."""
    if options.batch is not None and not options.dynamic_size:
        return None
    axes = {} if options.batch is not None else {0: "batch"}
    if options.dynamic_size:
        axes.update({2: "height", 3: "width"})
    return {INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"} if options.batch is None else {}}


def trace(lowered: nn.Module, options: ExportOptions) -> onnx.ModelProto:
    """torch.onnx (TorchScript exporter) on the lowered network, with its printing kept off the terminal.

    On failure the exporter's full output (its graph dump, warnings and the traceback) stays in a log
    file named in the :class:`ExportFailed` message; on success the log is removed.
    """
    fd, log_path = tempfile.mkstemp(prefix=f"dcd-deploy-export-{options.path.stem}-", suffix=".log")
    keep_log = False
    try:
        with os.fdopen(fd, "w+b") as log:
            try:
                buffer = io.BytesIO()
                with quiet(log):
                    example = example_input(options.batch or trace_batch(lowered), options.hw)
                    torch.onnx.export(lowered, (example,), buffer, dynamo=False,
                                      opset_version=options.opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes=dynamic_axes(options), do_constant_folding=True)
            except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one paragraph and a log
                raise_if_interrupted()
                log.write("".join(traceback.format_exception(exc)).encode("utf-8", "replace"))
                keep_log = True
                raise ExportFailed(
                    f"torch.onnx could not export the lowered network: {summarize_exception(exc)}. "
                    f"The exporter's full output is in {log_path}.",
                    "Layers dcd-deploy does not lower (a dynamic convolution of an unknown structure, a custom op) "
                    "may not be exportable: run `dcd-deploy inspect` on the checkpoint to see what was recognised, "
                    "and report the structure to the dcd-deploy maintainers with the log.",
                ) from None
    finally:
        if not keep_log:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log_path)
    return _expand_custom_ops(onnx.load_from_string(buffer.getvalue()), options)


def _expand_custom_ops(graph: onnx.ModelProto, options: ExportOptions) -> onnx.ModelProto:
    """Replace dcd-deploy's own exporter nodes (per-sample convolutions) by standard ONNX."""
    from .folded import expand_folded_convs
    from .loops import expand_per_sample_convs

    try:
        return expand_per_sample_convs(expand_folded_convs(graph))
    except ValueError as exc:
        raise InputError(f"--opset {options.opset} is too old for this network: {exc}.",
                         "Pass a higher --opset, e.g. the default.") from None


def simplify(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnxsim, or the graph unchanged with the reason when onnxsim fails or cannot verify."""
    try:
        import onnxsim

        with quiet():
            simplified, ok = onnxsim.simplify(graph)
        if not ok:
            return graph, "onnxsim could not validate its result; kept the unsimplified graph"
        return simplified, None
    except Exception as exc:  # noqa: BLE001 - any onnxsim failure falls back to the raw graph
        raise_if_interrupted()
        return graph, f"onnxsim failed ({summarize_exception(exc, limit=200)}); kept the unsimplified graph"


def convert(graph: onnx.ModelProto, options: ExportOptions) -> onnx.ModelProto:
    """The graph in the requested precision (float16 compute with ``fp16``; float32 I/O either way)."""
    if not options.fp16:
        return graph
    from .fp16 import to_fp16

    return to_fp16(graph)


def metadata(model: Any, options: ExportOptions, report: RewriteReport) -> dict[str, str]:
    """The ``dcd_deploy.*`` metadata: the loaded checkpoint (when ``model`` is a LoadedModel), the
    export settings and the rewrite, then the caller's ``options.metadata``."""
    meta: dict[str, str] = {}
    checkpoint = getattr(model, "checkpoint", None)
    if checkpoint is not None:  # a LoadedModel
        meta.update({
            "dcd_deploy.arch": model.arch,
            "dcd_deploy.arch_options": json.dumps(model.options, sort_keys=True),
            "dcd_deploy.checkpoint_sha256": checkpoint.sha256 or "",
            "dcd_deploy.checkpoint": checkpoint.path.name if checkpoint.path else "",
        })
    h, w = options.hw
    layers = [{"path": layer.path, "kind": layer.kind, "form": layer.form, "folded_bn": layer.folded_bn,
               "lowered": layer.lowered} for layer in report.layers]
    meta.update({
        "dcd_deploy.version": __version__,
        "dcd_deploy.input_size": f"{h}x{w}",
        "dcd_deploy.dynamic_batch": str(options.batch is None).lower(),
        **batch_specific_metadata(report, options.batch),
        "dcd_deploy.dynamic_size": str(options.dynamic_size).lower(),
        "dcd_deploy.precision": options.precision,
        "dcd_deploy.target": options.target,
        "dcd_deploy.rewrite": json.dumps({"summary": report.summary(), "layers": layers}),
    })
    meta.update({k: str(v) for k, v in (options.metadata or {}).items()})
    return meta


def stamp(graph: onnx.ModelProto, meta: dict[str, str]) -> onnx.ModelProto:
    """Set the graph's metadata to ``meta`` (replacing any) and name dcd-deploy as its producer."""
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name = "dcd-deploy"
    graph.producer_version = __version__
    return graph


def check_graph(graph: onnx.ModelProto, options: ExportOptions, report: RewriteReport | None = None) -> None:
    """onnx.checker (full check) and dcd-deploy's graph rules; :class:`LoweringError` when one is broken.

    A batch size frozen inside a layer that keeps the user's own code (``report``'s layers of a family
    with ``trace_batch`` > 1, the generic one) is the user's code's doing, and said so."""
    try:
        onnx.checker.check_model(graph, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise LoweringError(f"The exported graph fails ONNX's checker: {summarize_exception(exc)}.",
                            "This is a dcd-deploy bug; please report it with the model and the options used "
                            f"(--opset {options.opset} among them).") from None
    frozen = batch_independent(graph, options.batch)
    own_code = _frozen_in_user_code(frozen, report)
    if own_code:
        layers = ", ".join(own_code)
        raise LoweringError(
            f"The forward() of {layers} turns the batch size into a Python number (int(x.shape[0]), .item(), a list of "
            f"samples), so the trace froze batch {trace_batch_of(report)} into the graph ({'; '.join(frozen)}), and the "
            "file would only run at that batch.",
            "Keep the batch a tensor size in that forward(): use b = x.shape[0] directly in view/reshape (no int()), "
            "or -1; dcd-deploy lowers the grouped convolution itself, whatever its groups= argument.")
    problems = [f"Conv {n} takes a computed weight" for n in conv_weights_are_constant(graph)]
    problems += frozen
    if problems:
        raise LoweringError("The exported graph breaks dcd-deploy's graph rules: " + "; ".join(problems) + ".",
                            "This is a dcd-deploy bug; please report it with the model.")


def _frozen_in_user_code(frozen: list[str], report: RewriteReport | None) -> list[str]:
    """The layers keeping the user's own code (family ``trace_batch`` > 1) that a frozen Reshape of
    ``frozen`` lies in, by the exporter's scope names (``/<name>/module/...``)."""
    if not frozen or report is None:
        return []
    from ..lowering import FAMILIES

    layers = [layer for layer in report.lowered if FAMILIES[layer.family].trace_batch > 1]
    return [f"{layer.path} ({layer.kind})" for layer in layers
            if any(f"/{layer.path.rsplit('.', 1)[-1]}/module/" in line for line in frozen)]


def trace_batch_of(report: RewriteReport | None) -> int:
    from ..lowering import FAMILIES

    return max([FAMILIES[layer.family].trace_batch for layer in (report.lowered if report else [])], default=1)


def self_check(data: bytes, original: nn.Module, options: ExportOptions) -> SelfCheck:
    """The serialized graph on ONNX Runtime CPU against the ORIGINAL model, per self-check batch size.

    The reference is the original evaluated in float64 (a deep copy), and the bound allows the
    original's own float32 error on the same inputs (:class:`SelfCheck`); a network that cannot run
    in float64 is compared in float32 against the fixed bound, with the reason as a note.
    """
    from ..runtime.float64 import Float64Unavailable, run_float64
    from ..runtime.session import create_session

    session = create_session(data, "cpu")
    inputs = {batch: example_input(batch, options.hw, seed=100 + i) for i, batch in enumerate(options.check_batches)}
    with torch.no_grad():
        ref32 = {batch: original(x) for batch, x in inputs.items()}
    outs = {batch: _run_at_batch(session, batch, x) for batch, x in inputs.items()}
    floor = SELF_CHECK_RTOL[options.precision]
    try:
        ref64 = run_float64(original, lambda twin: {batch: twin(x.double()) for batch, x in inputs.items()})
    except Float64Unavailable as why:
        return SelfCheck({b: relative_error(outs[b], ref32[b]) for b in inputs}, floor, reference="float32",
                         note=f"the original could not be evaluated in float64: {why}")
    return SelfCheck({b: relative_error(outs[b], ref64[b]) for b in inputs}, floor,
                     noise={b: relative_error(ref32[b], ref64[b]) for b in inputs})


def _run_at_batch(session, batch: int, x: torch.Tensor) -> torch.Tensor:
    """The session's output at ``x``; a graph that cannot run at this batch is a finding, not a bug trace."""
    try:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    except Exception as exc:  # noqa: BLE001 - the graph cannot run at this batch: a finding, not a bug trace
        raise_if_interrupted()
        raise SelfCheckFailed(
            f"The exported model does not run at batch {batch} on ONNX Runtime ({summarize_exception(exc, limit=300)}). "
            "No file was written.",
            "A batch size frozen into the graph is the usual cause: a forward() that turns x.shape[0] into a Python "
            "number (int(), .item(), a loop over the samples); keep it a tensor size (view(b, ...) with "
            "b = x.shape[0], or -1).",
        ) from None
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def calibration_data(options: ExportOptions) -> np.ndarray | None:
    """The int8 calibration samples (``None`` without ``int8``), read and checked against the input
    the export will have before any work: an array as given, or what
    :func:`dcd_deploy.runtime.labelled.load_samples` reads (``.npz``/``.npy``, a compact images
    ``.npz``, an image folder normalised with ``mean``/``std``)."""
    if not options.int8:
        return None
    return load_calibration(options.calibration, options.hw, options.mean, options.std, options.dynamic_size)


def load_calibration(source: Any, hw: tuple[int, int], mean: Any = None, std: Any = None,
                     dynamic_size: bool = False) -> np.ndarray:
    """Calibration samples for an N×3×H×W input of size ``hw`` (see :func:`calibration_data`)."""
    from ..runtime.inputs import check_shape
    from ..runtime.labelled import load_samples
    from ..runtime.onnxfile import InputSpec

    spec = InputSpec(INPUT_NAME, (None, 3, *((None, None) if dynamic_size else hw)), np.dtype(np.float32), hw)
    if isinstance(source, np.ndarray):
        data = check_shape(source, spec, "The calibration data")
    else:
        data = load_samples(source, spec, input_size=hw, mean=mean, std=std)
    return np.ascontiguousarray(data, dtype=np.float32)


def quantize(graph: onnx.ModelProto, calibration: np.ndarray, options: ExportOptions) -> onnx.ModelProto:
    """The QDQ int8 graph (:func:`dcd_deploy.exporting.quantize.quantize_int8`), its metadata kept and
    completed with the calibration method and sample count."""
    from .quantize import quantize_int8

    return quantize_int8(graph, calibration, options.calibration_method, progress=options.progress)


def int8_self_check(data: bytes, original: nn.Module, calibration: np.ndarray, batch: int = 8) -> Int8Check:
    """The int8 graph on ONNX Runtime CPU against the ORIGINAL model's logits on
    :func:`~dcd_deploy.exporting.int8check.check_inputs` (shifted, noised calibration samples)."""
    from .int8check import check_inputs, run_int8_check

    x = check_inputs(calibration)
    with torch.no_grad():
        ref = np.concatenate([original(torch.from_numpy(x[i:i + batch])).float().numpy()
                              for i in range(0, len(x), batch)])
    return run_int8_check(data, x, ref)


def write(data: bytes, check: SelfCheck | Int8Check | None, options: ExportOptions) -> Path:
    """Write the file at once or not at all; a failed self-check writes nothing (unless ``keep_failed``)
    and raises :class:`SelfCheckFailed`."""
    from ..reporting import write_output

    if check is not None and not check:
        kept = " No file was written."
        if options.keep_failed:
            write_output(options.path, data, "ONNX model")
            kept = f" The failing graph was kept at {options.path} (--keep-failed)."
        if isinstance(check, Int8Check):
            raise SelfCheckFailed(
                f"The int8 model strays too far from the float32 original: {check.summary()}.{kept}",
                "Calibrate on more (and more representative) training images, try --calibration-method entropy "
                "or percentile, and measure the accuracy with `dcd-deploy evaluate` on labelled data.",
            )
        raise SelfCheckFailed(
            f"The exported model does not match the original: {check.summary()}.{kept}",
            "Run `dcd-deploy parity --localize` on a --keep-failed export to find the first diverging layer.",
        )
    return write_output(options.path, data, "ONNX model")
