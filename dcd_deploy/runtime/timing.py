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
    results = [RowMeasurement(r.label, r.batch) for r in runners]
    n = len(runners)
    perf = time.perf_counter

    def drop(i: int, reason: str) -> None:
        results[i].skipped = reason
        with contextlib.suppress(Exception):
            runners[i].close()

    with torch_threads(threads):
        active: list[int] = []
        for i, runner in enumerate(runners):
            report("setting up", i, n, runner.label)
            try:
                t0 = perf()
                runner.setup()
                results[i].setup_s = perf() - t0
                t0 = perf()
                runner.run()
                results[i].cold_s = perf() - t0
                active.append(i)
            except RowUnavailable as exc:
                drop(i, exc.reason)
        report("setting up", n, n, "")

        for w in range(warmup):
            report("warming up", w, warmup, "")
            for i in _rotated(list(active), w):
                try:
                    runners[i].run()
                except RowUnavailable as exc:
                    active.remove(i)
                    drop(i, f"failed while warming up: {exc.reason}")
        if warmup:
            report("warming up", warmup, warmup, "")

        times: dict[int, list[float]] = {i: [] for i in active}
        start = perf()
        rounds = 0
        total = float(runs) if runs is not None else float(duration)  # type: ignore[arg-type]
        while active:
            if runs is not None and rounds >= runs:
                break
            elapsed = perf() - start
            if duration is not None and rounds >= MIN_ROUNDS and elapsed >= duration:
                break
            report("measuring", rounds if runs is not None else min(elapsed, total), total, "")
            for i in _rotated(list(active), rounds):
                try:
                    t0 = perf()
                    runners[i].run()
                    times[i].append(perf() - t0)
                except RowUnavailable as exc:
                    active.remove(i)
                    drop(i, f"failed while measuring: {exc.reason}")
            rounds += 1
        report("measuring", total, total, "")
        for i in active:
            results[i].stats = LatencyStats(tuple(times[i]), runners[i].batch)
    return results
