"""``dcd-deploy bench``: the deployment options of one DCD model, timed side by side in one run.

Rows (each per execution provider and batch size, all measured in ONE interleaved round-robin run
on the same inputs, see :mod:`dcd_deploy.runtime.timing`):

=================  ===================================================================================
``eager``          PyTorch eager, the original network (CPU, or CUDA with the ``cuda`` provider)
``eager-lowered``  PyTorch eager, the network after dcd-deploy's lowering
``naive``          plain ``torch.onnx.export`` of the original network (``dynamo=True``, then
                   ``dynamo=False`` if that fails) on ONNX Runtime; when both fail, the row says why
``dcd-deploy``     ``dcd_deploy.export`` (lowered, simplified, checked) on ONNX Runtime
``static``         the static twin (every DCD layer replaced by W0, the head by its Linear,
                   :mod:`dcd_deploy.lowering.static_twin`), exported the same way: the floor
``int8``           with calibration data: the int8 export (factored form, static convolutions in
                   int8); its error column is the int8 check (top-1 agreement, logit cosine)
``int8-static``    the static twin quantized the same way: the int8 floor
=================  ===================================================================================

:func:`bench` checks the settings, makes each row's artifact once (:mod:`.artifacts`; ONNX files
have a dynamic batch axis and are shared by every provider and batch size), gives each (row,
provider, batch) its own runner (:mod:`dcd_deploy.runtime.runners`), times them all interleaved,
then checks each measured row's output against the original network and the stability of its
timings. With an ONNX file alone only the row that needs no checkpoint is measured: the file itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, summarize_exception
from ..exporting.stages import load_calibration
from ..load.model import LoadedModel
from ..lowering import relative_error
from ..lowering.costmodel import TARGETS
from ..runtime.inputs import check_input_memory
from ..runtime.onnxfile import parse_size
from ..runtime.runners import GPU_PROVIDERS, TORCH_DEVICES, OrtRunner, TorchRunner, ort_missing, torch_missing
from ..runtime.session import device_name, parse_providers, provider_name, short_name
from ..runtime.timing import Progress, instability, measure_interleaved, torch_threads
from ..sysinfo import machine, versions
from .artifacts import prepare_checkpoint_rows, prepare_onnx_row
from .results import TORCH_ROWS, BenchResult, BenchRow, Prepared
from .settings import DEFAULT_INPUT_SIZE, DEFAULT_NAIVE_EXPORTER, DEFAULT_RUNS, DEFAULT_WARMUP, NAIVE_EXPORTERS, BenchSettings

# A measured row whose output differs from the original network's by more than this (relative
# max error) gets a warning note: a fast row that computes something else is no option.
AGREEMENT_RTOL = 1e-3
# GPU rows compute float32 convolutions and products in TF32 by default (ONNX Runtime's use_tf32,
# PyTorch's cudnn.allow_tf32): 10 mantissa bits, so the same rule as `dcd-deploy parity` for tf32.
REDUCED_PRECISION_RTOL = 2e-2

Source = nn.Module | LoadedModel | str | os.PathLike


def bench(
    source: Source,
    providers: str | Sequence[str] = ("cpu",),
    batches: Sequence[int] = (1,),
    input_size: int | str | Sequence[int] | None = None,
    threads: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    runs: int | None = None,
    duration: float | None = None,
    cuda_graph: bool = False,
    naive_exporter: str = DEFAULT_NAIVE_EXPORTER,
    progress: Progress | None = None,
    target: str | None = None,
    calibration: str | os.PathLike | np.ndarray | None = None,
    int8: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BenchResult:
    """Time every deployment option of ``source`` per provider and batch size, interleaved.

    ``source`` is a network (or :class:`LoadedModel`) with DCD layers: all five rows; or a path
    to an ONNX file: its one row. ``input_size`` defaults to 224 for a network and to the size
    the ONNX file was exported for. ``runs`` timed rounds (default 100) or ``duration`` seconds of
    them, not both. ``threads`` (default: PyTorch's default thread count) is used for PyTorch and
    for ONNX Runtime's intra-op pool alike. ``target`` is the cost model the ``dcd-deploy`` row is
    exported with (default: 'cuda' when a GPU provider is requested, else 'cpu'). ``progress`` is
    called as ``progress(stage, done, total, detail)``. ``calibration`` (samples, or a file or
    image folder normalised with ``mean``/``std``, as ``export --calibration`` reads it) adds the
    ``int8`` and ``int8-static`` rows; ``int8`` without it is a usage error. Rows that cannot run
    here are reported with their reason, never raised; see :meth:`BenchResult.raise_if_nothing_measured`.
    """
    settings = bench_settings(providers, batches, threads, warmup, runs, duration, cuda_graph, naive_exporter, target)
    if int8 and calibration is None:
        raise InputError("--int8 needs calibration data to quantize the int8 rows.",
                         "Pass --calibration DATA (an .npz with 'input', or an image folder with --mean/--std).")
    check_bench_inputs(settings.batches, input_size)
    int8_data = (calibration, mean, std) if calibration is not None else None
    with torch_threads(settings.threads, inference=False):  # preparation (lowering, exports) uses the same threads
        return _bench(source, settings, input_size, progress or (lambda stage, done, total, detail: None), int8_data)


def check_bench_inputs(batches: Sequence[int], input_size: int | str | Sequence[int] | None) -> None:
    """:class:`InputError` when the timed inputs (one float32 array per batch size) cannot fit in memory at
    ``input_size`` (``None``: the default or the ONNX file's size, which fit); run before anything is loaded."""
    if input_size is not None:
        check_input_memory(sum(batches), 3, parse_size(input_size), 4, "the timed inputs", " or smaller --batch sizes")


def bench_settings(providers: str | Sequence[str], batches: Sequence[int], threads: int | None, warmup: int,
                   runs: int | None, duration: float | None, cuda_graph: bool, naive_exporter: str,
                   target: str | None) -> BenchSettings:
    """Check the arguments of :func:`bench`; raises :class:`InputError` (a usage error) for a bad one."""
    batch_list = list(dict.fromkeys(int(b) for b in batches))
    if not batch_list or any(b < 1 for b in batch_list):
        raise InputError(f"Batch sizes {batch_list} must be positive integers.", "Example: --batch 1,8.")
    if naive_exporter not in NAIVE_EXPORTERS:
        raise InputError(f"Unknown naive exporter {naive_exporter!r}.", f"Choose one of: {', '.join(NAIVE_EXPORTERS)}.")
    if warmup < 0:
        raise InputError(f"--warmup {warmup} is negative.", "Use 0 or more warm-up rounds.")
    if runs is not None and runs < 1:
        raise InputError(f"--runs {runs} must be at least 1.", "Example: --runs 100.")
    if duration is not None and duration <= 0:
        raise InputError(f"--duration {duration} must be positive.", "Example: --duration 30.")
    if runs is not None and duration is not None:
        raise InputError("--runs and --duration are mutually exclusive.", "Give one: a number of rounds or seconds to measure.")
    names = parse_providers(providers)
    if not names:
        raise InputError("No execution provider was given.", "Example: --providers cpu,cuda.")
    if target is None:
        target = "cuda" if any(p in GPU_PROVIDERS for p in names) else "cpu"
    if target not in TARGETS:
        raise InputError(f"Unknown target {target!r}.", f"Choose one of: {', '.join(TARGETS)}.")
    threads = int(threads) if threads else torch.get_num_threads()
    if threads < 1:
        raise InputError(f"--threads {threads} must be at least 1.", "Omit it to use PyTorch's default.")
    return BenchSettings(
        providers=tuple(names), batches=tuple(batch_list), threads=threads, warmup=warmup,
        runs=DEFAULT_RUNS if runs is None and duration is None else runs, duration=duration, cuda_graph=cuda_graph,
        naive_exporter=naive_exporter, target=target,
    )


@dataclasses.dataclass
class _Subject:
    """What is benched: the artifacts of its rows, the inputs per batch size and the reference outputs."""

    mode: str  # checkpoint | onnx
    source: str
    name: str
    hw: tuple[int, int]
    inputs: dict[int, np.ndarray]
    prepared: list[Prepared]
    refs: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # the original network's outputs


def _inputs(batches: Sequence[int], hw: tuple[int, int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal((b, 3, *hw), dtype=np.float32) for b in batches}


def _reference_outputs(model: nn.Module, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    refs = {}
    with torch.inference_mode():
        for b, x in inputs.items():
            try:
                refs[b] = model(torch.from_numpy(x)).float().numpy()
            except RuntimeError as exc:
                raise InputError(
                    f"The network does not run on an input of shape {tuple(x.shape)}: {summarize_exception(exc)}.",
                    "Choose an --input-size the network accepts (e.g. 224, or the size it was trained at).",
                ) from None
    return refs


def _subject(source: Source, settings: BenchSettings, input_size: int | str | Sequence[int] | None,
             report: Progress, int8_data: tuple[Any, Any, Any] | None = None) -> _Subject:
    default = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    if not isinstance(source, (nn.Module, LoadedModel)):
        if int8_data is not None:
            raise InputError("--calibration applies to checkpoints: bench makes the int8 rows by exporting the network.",
                             "Bench the checkpoint with --calibration, or an int8 file written by `export --int8` alone.")
        prep, name, size = prepare_onnx_row(source)
        hw = parse_size(input_size) if input_size is not None else size or default
        return _Subject("onnx", os.fspath(source), name, hw, _inputs(settings.batches, hw), [prep])
    loaded = source if isinstance(source, LoadedModel) else None
    original = loaded.model if loaded else source
    name = loaded.describe() if loaded else type(original).__name__
    path = os.fspath(loaded.checkpoint.path) if loaded and loaded.checkpoint.path else name
    hw = parse_size(input_size) if input_size is not None else default
    calibration = None
    if int8_data is not None:  # (source, mean, std): read and checked before anything is made
        calibration = load_calibration(int8_data[0], hw, mean=int8_data[1], std=int8_data[2])
    inputs = _inputs(settings.batches, hw)
    refs = _reference_outputs(original.eval(), inputs)
    onnx_rows = any(ort_missing(p) is None for p in settings.providers)
    torch_rows = any(p in TORCH_DEVICES and torch_missing(p) is None for p in settings.providers)
    one_batch = settings.batches[0] if len(settings.batches) == 1 else None  # its batch-specific row
    prepared = prepare_checkpoint_rows(source, hw, settings.naive_exporter, report, onnx_rows=onnx_rows,
                                       torch_rows=torch_rows, target=settings.target, static_batch=one_batch,
                                       calibration=calibration)
    return _Subject("checkpoint", path, name, hw, inputs, prepared, refs)


@dataclasses.dataclass
class _Plan:
    """Every (row, provider, batch) to report, and a runner for each one that can be measured."""

    rows: list[BenchRow] = dataclasses.field(default_factory=list)
    runners: list[tuple[BenchRow, Any]] = dataclasses.field(default_factory=list)
    devices: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    torch_cache: dict[int, nn.Module] = dataclasses.field(default_factory=dict)


def _plan(subject: _Subject, s: BenchSettings) -> _Plan:
    plan = _Plan()
    for provider in s.providers:
        short = short_name(provider)
        no_ort = ort_missing(provider)
        no_torch = torch_missing(provider) if provider in TORCH_DEVICES else None
        if not no_ort or (provider in TORCH_DEVICES and not no_torch and subject.mode == "checkpoint"):
            plan.devices[short] = device_name(provider)
        if s.cuda_graph and provider not in GPU_PROVIDERS:
            plan.notes.append(f"--cuda-graph has no effect on {short}")
        for batch in s.batches:
            for prep in subject.prepared:
                is_torch = prep.row in TORCH_ROWS
                if is_torch and provider not in TORCH_DEVICES:
                    continue  # PyTorch eager has no counterpart on this provider
                row = BenchRow(prep.row, short, batch, int8=None if prep.int8 is None else prep.int8.to_dict())
                plan.rows.append(row)
                missing = no_torch if is_torch else no_ort
                label, x = f"{short} b{batch} {prep.row}", subject.inputs[batch]
                if missing:
                    row.status, row.reason = "skipped", missing
                elif prep.failure:
                    row.status, row.reason = "failed", prep.failure
                elif is_torch:
                    plan.runners.append((row, TorchRunner(label, prep.model, x, TORCH_DEVICES[provider], plan.torch_cache)))  # type: ignore[arg-type]
                else:
                    plan.runners.append((row, OrtRunner(label, prep.onnx, x, provider, s.threads, s.cuda_graph)))  # type: ignore[arg-type]
    return plan


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """:func:`dcd_deploy.lowering.relative_error` on arrays; inf when the shapes differ."""
    if out.shape != ref.shape:
        return float("inf")
    return relative_error(torch.from_numpy(np.ascontiguousarray(out)), torch.from_numpy(np.ascontiguousarray(ref)))


def _measure(plan: _Plan, refs: dict[int, np.ndarray], s: BenchSettings, report: Progress) -> None:
    """Time every runner interleaved and fill in its row (statistics, or why not; agreement with ``refs``)."""
    try:
        measurements = measure_interleaved([r for _, r in plan.runners], warmup=s.warmup, runs=s.runs,
                                           duration=s.duration, threads=s.threads, progress=report)
        for (row, runner), m in zip(plan.runners, measurements):
            row.setup_s, row.cold_s, row.stats = m.setup_s, m.cold_s, m.stats
            if m.skipped:
                row.status = "skipped" if getattr(runner, "provider_failed", False) else "failed"
                row.reason = m.skipped
            elif refs and row.row != "static" and row.int8 is None:  # int8 rows: their int8 check instead
                out = runner.output()
                if out is not None:
                    row.max_rel_err = _relative_error(out, refs[row.batch])
    finally:
        for _, runner in plan.runners:
            runner.close()
        plan.torch_cache.clear()


def findings(rows: list[BenchRow]) -> list[str]:
    """Notes on measured rows: an output that disagrees with the original network, unstable timings."""
    notes = []
    for row in rows:
        rtol = REDUCED_PRECISION_RTOL if provider_name(row.provider) in GPU_PROVIDERS else AGREEMENT_RTOL
        if row.max_rel_err is not None and not row.max_rel_err <= rtol:
            notes.append(f"{row.key}: output differs from the original network "
                         f"(max relative error {row.max_rel_err:.1e}); its time is not a like-for-like option")
        if row.int8 is not None and not row.int8["passed"] and row.stats is not None:
            notes.append(f"{row.key}: the int8 model strays from its float32 network (top-1 agreement "
                         f"{row.int8['agreement']:.1%}, logit cosine mean {row.int8['cosine_mean']:.4f}); "
                         "calibrate on more representative data before shipping it")
        if row.stats is not None:
            row.unstable = instability(row.stats)
            if row.unstable:
                notes.append(f"{row.key}: timings unstable: {row.unstable}")
    return notes


def _ratios(rows: list[BenchRow]) -> None:
    """``vs_static`` and ``vs_eager``: median latency over the static / eager row's median, same provider and batch."""
    by_key: dict[tuple[str, int, str], BenchRow] = {(r.provider, r.batch, r.row): r for r in rows}
    for row in rows:
        if not row.stats:
            continue
        for attr, ref_name in (("vs_static", "static"), ("vs_eager", "eager")):
            ref = by_key.get((row.provider, row.batch, ref_name))
            if ref is not None and ref.stats is not None and ref.stats.p50 > 0:
                setattr(row, attr, row.stats.p50 / ref.stats.p50)


def _bench(source: Source, s: BenchSettings, input_size: int | str | Sequence[int] | None,
           report: Progress, int8_data: tuple[Any, Any, Any] | None = None) -> BenchResult:
    subject = _subject(source, s, input_size, report, int8_data)
    plan = _plan(subject, s)
    _measure(plan, subject.refs, s, report)
    notes = plan.notes + findings(plan.rows)
    _ratios(plan.rows)
    for prep in subject.prepared:
        prep.model = prep.onnx = None  # the result keeps what was found, not the networks and graphs
    return BenchResult(
        source=subject.source, mode=subject.mode, model=subject.name, input_size=subject.hw,
        providers=[short_name(p) for p in s.providers], batches=list(s.batches), threads=s.threads, warmup=s.warmup,
        runs=s.runs, duration=s.duration, cuda_graph=s.cuda_graph, rows=plan.rows, prepared=subject.prepared,
        devices=plan.devices, versions=versions(), machine=machine(), notes=notes,
    )


__all__ = ["AGREEMENT_RTOL", "REDUCED_PRECISION_RTOL", "bench", "bench_settings", "findings"]
