"""Latency statistics, and the interleaved round-robin runner that collects them.

Statistics (:class:`LatencyStats`) are computed from the list of per-run wall-clock seconds:

* ``mean`` and ``std`` (sample standard deviation, n − 1 in the denominator; 0 for one run);
* ``min``, ``max`` and the percentiles ``p50``, ``p90``, ``p95``, ``p99``, by linear interpolation
  between the two nearest ranks (position (n − 1)·q/100 in the sorted list; numpy's default);
* ``throughput`` = batch / mean: images per second, counting every image of the batch.

The runner (:func:`measure_interleaved`) times several *row runners* in one run. Each runner is
set up (timed: session creation) and run once (timed: the cold run), then all of them are warmed
up and measured round-robin: every round runs each row once, starting at a different row each
round, so a slow drift of the machine (thermal state, another process, turbo) spreads over all
rows instead of favouring whichever row was measured first. A runner's ``run()`` must return only
when its result is ready (CUDA rows synchronise inside ``run()``), and each run is timed with
:func:`time.perf_counter` around that call. PyTorch rows run under ``torch.inference_mode`` with
``torch.set_num_threads(threads)``, set once for the whole measurement.

:func:`instability` says when one row's timings cannot be trusted (a long tail, a spread over the
mean, a drift between the first and the last runs) and names the likely cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

PERCENTILES = (50, 90, 95, 99)
# With --duration, at least this many rounds are measured even if the time is already spent.
MIN_ROUNDS = 2

Progress = Callable[[str, float, float, str], None]  # (stage, done, total, detail)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, by linear interpolation between ranks."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Statistics of one row's timed runs. ``times_s`` are seconds per run, in run order."""

    times_s: tuple[float, ...]
    batch: int = 1

    def __post_init__(self) -> None:
        if not self.times_s:
            raise ValueError("LatencyStats needs at least one timing")
        if self.batch < 1:
            raise ValueError(f"batch {self.batch} is not positive")
        object.__setattr__(self, "times_s", tuple(float(t) for t in self.times_s))
        object.__setattr__(self, "_sorted", tuple(sorted(self.times_s)))

    @property
    def count(self) -> int:
        return len(self.times_s)

    @property
    def mean(self) -> float:
        return math.fsum(self.times_s) / self.count

    @property
    def std(self) -> float:
        if self.count < 2:
            return 0.0
        m = self.mean
        return math.sqrt(math.fsum((t - m) ** 2 for t in self.times_s) / (self.count - 1))

    @property
    def min(self) -> float:
        return self._sorted[0]

    @property
    def max(self) -> float:
        return self._sorted[-1]

    def percentile(self, q: float) -> float:
        return percentile(self._sorted, q)

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def throughput(self) -> float:
        """Images per second: the batch size over the mean latency."""
        return self.batch / self.mean if self.mean > 0 else math.inf

    def to_dict(self, include_times: bool = True) -> dict[str, Any]:
        """Milliseconds (and images per second), the form every report uses."""
        d: dict[str, Any] = {
            "count": self.count,
            "mean_ms": self.mean * 1e3,
            "std_ms": self.std * 1e3,
            "min_ms": self.min * 1e3,
            **{f"p{q}_ms": self.percentile(q) * 1e3 for q in PERCENTILES},
            "max_ms": self.max * 1e3,
            "throughput_ips": self.throughput,
        }
        if include_times:
            d["times_ms"] = [round(t * 1e3, 6) for t in self.times_s]
        return d


# A row's timings are unstable when its tail is far from its median, its spread exceeds its mean, or
# its speed drifted during the measurement; the likely cause is read from the run-order series.
UNSTABLE_TAIL = 3.0  # p99 above this many times p50
UNSTABLE_SPREAD = 1.0  # std above this many times the mean
DRIFT = 1.5  # medians of the first and the last third of the runs this far apart: the machine changed speed
SPIKE = 3.0  # a run this many times the median was interrupted
FEW_RUNS = 20  # below this count, p99 is one or two runs


def _drift(stats: LatencyStats) -> tuple[float, float] | None:
    """Medians of the first and the last third of the runs (run order), when there are enough runs for both."""
    third = stats.count // 3
    if third < 2:
        return None
    return percentile(sorted(stats.times_s[:third]), 50), percentile(sorted(stats.times_s[-third:]), 50)


def instability(stats: LatencyStats) -> str | None:
    """Why ``stats`` are not a stable latency, with the likely cause; None when they are stable.

    Unstable: p99 > :data:`UNSTABLE_TAIL` × p50, std > :data:`UNSTABLE_SPREAD` × mean, or the
    medians of the first and last third of the runs :data:`DRIFT` × apart. Causes, from the run
    order: a drift (thermal throttling, a clock change), isolated runs over :data:`SPIKE` × the
    median (another process or the OS took the cores), fewer than :data:`FEW_RUNS` runs.
    """
    tail = stats.p99 / stats.p50 if stats.p50 > 0 else math.inf
    spread = stats.std / stats.mean if stats.mean > 0 else 0.0
    first, last = _drift(stats) or (stats.p50, stats.p50)
    drift = max(first, last) / min(first, last) if min(first, last) > 0 else 1.0
    if tail <= UNSTABLE_TAIL and spread <= UNSTABLE_SPREAD and drift < DRIFT:
        return None
    causes = []
    if drift >= DRIFT:
        causes.append(f"the runs {'slowed down' if last > first else 'sped up'} during the measurement (median "
                      f"{first * 1e3:.3g} ms in the first third, {last * 1e3:.3g} ms in the last): thermal "
                      "throttling or a clock-speed change; let the machine settle or fix its clock")
    spikes = sum(t > SPIKE * stats.p50 for t in stats.times_s)
    if spikes:
        causes.append(f"{spikes} run(s) took over {SPIKE:g}× the median: another process or the OS interrupted "
                      "them; measure on an idle machine or with fewer --threads")
    if stats.count < FEW_RUNS:
        causes.append(f"only {stats.count} timed run(s), so one slow run sets the tail; use --runs 100 or more")
    if not causes:
        causes.append("the machine was not quiet (another process, thermal throttling) or the runs were too few")
    return f"p99 {tail:.1f}× p50, std {spread:.1f}× mean over {stats.count} run(s): " + "; ".join(causes)


class RowUnavailable(Exception):
    """Raised by a row runner that cannot be measured here; ``reason`` says why, for the report."""

    def __init__(self, reason: str):
        self.reason = reason.strip()
        super().__init__(self.reason)


class RowRunner(Protocol):
    """What :func:`measure_interleaved` needs from a row."""

    label: str  # shown in progress messages
    batch: int  # images per run (for the throughput)

    def setup(self) -> None: ...  # create the session / move the model; may raise RowUnavailable

    def run(self) -> None: ...  # one inference, returning when its result is ready

    def close(self) -> None: ...  # release the session (called here for a dropped runner, else by the caller)


@dataclasses.dataclass
class RowMeasurement:
    """What was measured for one runner: setup and cold-run seconds and the statistics, or why not."""

    label: str
    batch: int
    setup_s: float | None = None
    cold_s: float | None = None
    stats: LatencyStats | None = None
    skipped: str | None = None

    @property
    def measured(self) -> bool:
        return self.stats is not None


@contextlib.contextmanager
def torch_threads(threads: int | None, inference: bool = True) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` (and ``torch.inference_mode()``) for the duration."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode(inference):
            yield
    finally:
        torch.set_num_threads(old)


def _rotated(items: list[int], start: int) -> list[int]:
    if not items:
        return items
    k = start % len(items)
    return items[k:] + items[:k]


class _Interleaved:
    """The runners of one measurement, the ones still active, and what was measured for each."""

    def __init__(self, runners: Sequence[RowRunner]):
        self.runners = runners
        self.results = [RowMeasurement(r.label, r.batch) for r in runners]
        self.active: list[int] = []

    def drop(self, i: int, reason: str) -> None:
        if i in self.active:
            self.active.remove(i)
        self.results[i].skipped = reason
        with contextlib.suppress(Exception):
            self.runners[i].close()

    def set_up(self, report: Progress) -> None:
        """Set up and cold-run each runner in turn (both timed)."""
        perf, n = time.perf_counter, len(self.runners)
        for i, runner in enumerate(self.runners):
            report("setting up", i, n, runner.label)
            try:
                t0 = perf()
                runner.setup()
                self.results[i].setup_s = perf() - t0
                t0 = perf()
                runner.run()
                self.results[i].cold_s = perf() - t0
                self.active.append(i)
            except RowUnavailable as exc:
                self.drop(i, exc.reason)
        report("setting up", n, n, "")

    def run_round(self, start: int, stage: str, times: dict[int, list[float]] | None = None) -> None:
        """Run every active runner once, starting at the ``start``-th; record the times when given ``times``."""
        for i in _rotated(list(self.active), start):
            try:
                t0 = time.perf_counter()
                self.runners[i].run()
                elapsed = time.perf_counter() - t0
            except RowUnavailable as exc:
                self.drop(i, f"failed while {stage}: {exc.reason}")
                continue
            if times is not None:
                times[i].append(elapsed)


def measure_interleaved(
    runners: Sequence[RowRunner],
    warmup: int = 10,
    runs: int | None = 100,
    duration: float | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[RowMeasurement]:
    """Set up, cold-run, warm up and time every runner round-robin; one measurement per runner.

    Exactly one of ``runs`` (rounds to time) and ``duration`` (seconds of timed rounds, at least
    :data:`MIN_ROUNDS` rounds) must be given. A runner raising :class:`RowUnavailable` at any point
    is dropped from the rounds and reported as skipped with its reason.
    """
    if (runs is None) == (duration is None):
        raise ValueError("give exactly one of runs and duration")
    if runs is not None and runs < 1:
        raise ValueError(f"runs={runs} must be at least 1")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration={duration} must be positive")
    report = progress or (lambda stage, done, total, detail: None)
    state = _Interleaved(runners)
    with torch_threads(threads):
        state.set_up(report)
        for w in range(warmup):
            report("warming up", w, warmup, "")
            state.run_round(w, "warming up")
        if warmup:
            report("warming up", warmup, warmup, "")

        times: dict[int, list[float]] = {i: [] for i in state.active}
        start, rounds = time.perf_counter(), 0
        total = float(runs) if runs is not None else float(duration)  # type: ignore[arg-type]
        while state.active:
            elapsed = time.perf_counter() - start
            if (runs is not None and rounds >= runs) or (
                    duration is not None and rounds >= MIN_ROUNDS and elapsed >= duration):
                break
            report("measuring", rounds if runs is not None else min(elapsed, total), total, "")
            state.run_round(rounds, "measuring", times)
            rounds += 1
        report("measuring", total, total, "")
        for i in state.active:
            state.results[i].stats = LatencyStats(tuple(times[i]), runners[i].batch)
    return state.results
