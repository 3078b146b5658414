"""Latency statistics on known timings, and the interleaved round-robin runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcd_deploy.runtime.timing import (
    MIN_ROUNDS,
    UNSTABLE_TAIL,
    LatencyStats,
    RowUnavailable,
    instability,
    measure_interleaved,
    percentile,
)

# 1..10 ms, deliberately not in sorted order.
TIMES_MS = [7, 3, 10, 1, 5, 9, 2, 8, 4, 6]


def test_stats_on_known_timings():
    s = LatencyStats(tuple(t / 1e3 for t in TIMES_MS), batch=4)
    assert s.count == 10
    assert s.mean == pytest.approx(5.5e-3, abs=1e-15)
    # sample standard deviation: sqrt(sum((i - 5.5)^2) / 9) = sqrt(82.5 / 9)
    assert s.std == pytest.approx(math.sqrt(82.5 / 9) * 1e-3, rel=1e-12)
    assert s.min == pytest.approx(1e-3) and s.max == pytest.approx(10e-3)
    # linear interpolation between ranks: position (n - 1) * q / 100 = 9q/100
    assert s.p50 == pytest.approx(5.5e-3, rel=1e-12)
    assert s.p90 == pytest.approx(9.1e-3, rel=1e-12)
    assert s.p95 == pytest.approx(9.55e-3, rel=1e-12)
    assert s.p99 == pytest.approx(9.91e-3, rel=1e-12)
    assert s.throughput == pytest.approx(4 / 5.5e-3, rel=1e-12)  # images per second, counting the batch
    assert s.times_s[0] == pytest.approx(7e-3)  # run order is kept


def test_stats_dict_is_in_milliseconds():
    d = LatencyStats(tuple(t / 1e3 for t in TIMES_MS), batch=1).to_dict()
    assert d["count"] == 10
    assert d["mean_ms"] == pytest.approx(5.5)
    assert d["std_ms"] == pytest.approx(math.sqrt(82.5 / 9))
    assert (d["min_ms"], d["max_ms"]) == (pytest.approx(1.0), pytest.approx(10.0))
    assert d["p50_ms"] == pytest.approx(5.5) and d["p90_ms"] == pytest.approx(9.1)
    assert d["p95_ms"] == pytest.approx(9.55) and d["p99_ms"] == pytest.approx(9.91)
    assert d["throughput_ips"] == pytest.approx(1000 / 5.5)
    assert d["times_ms"] == pytest.approx(TIMES_MS)
    assert "times_ms" not in LatencyStats((0.001,)).to_dict(include_times=False)


def test_stats_match_numpy_on_random_timings():
    rng = np.random.default_rng(3)
    times = rng.lognormal(-5, 0.4, 37)
    s = LatencyStats(tuple(times))
    assert s.mean == pytest.approx(times.mean(), rel=1e-12)
    assert s.std == pytest.approx(times.std(ddof=1), rel=1e-12)
    for q in (50, 90, 95, 99):
        assert s.percentile(q) == pytest.approx(np.percentile(times, q), rel=1e-12)


def test_one_timing():
    s = LatencyStats((0.002,), batch=2)
    assert s.std == 0.0
    assert s.p50 == s.p99 == s.min == s.max == 0.002
    assert s.throughput == pytest.approx(1000.0)


def test_invalid_stats():
    with pytest.raises(ValueError):
        LatencyStats(())
    with pytest.raises(ValueError):
        LatencyStats((0.001,), batch=0)
    with pytest.raises(ValueError):
        percentile([1.0, 2.0], 101)
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 0) == 10.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 100) == 40.0


class FakeRunner:
    def __init__(self, label, log, fail_setup=None, fail_on_call=None, batch=1):
        self.label, self.batch, self.log = label, batch, log
        self.fail_setup, self.fail_on_call = fail_setup, fail_on_call
        self.calls = 0
        self.closed = False
        self.seen_threads: set[int] = set()
        self.seen_inference: set[bool] = set()

    def setup(self):
        self.log.append(f"setup {self.label}")
        if self.fail_setup:
            raise RowUnavailable(self.fail_setup)

    def run(self):
        self.calls += 1
        self.log.append(self.label)
        self.seen_threads.add(torch.get_num_threads())
        self.seen_inference.add(torch.is_inference_mode_enabled())
        if self.fail_on_call == self.calls:
            raise RowUnavailable("boom")

    def close(self):
        self.closed = True


def test_round_robin_order_rotates():
    log: list[str] = []
    runners = [FakeRunner(n, log) for n in "ABC"]
    results = measure_interleaved(runners, warmup=1, runs=3)
    assert log == [
        "setup A", "A", "setup B", "B", "setup C", "C",  # setup + cold run, row by row
        "A", "B", "C",  # warm-up round 0
        "A", "B", "C", "B", "C", "A", "C", "A", "B",  # timed rounds start at a different row each round
    ]
    for r in results:
        assert r.measured and r.stats.count == 3
        assert r.setup_s is not None and r.cold_s is not None and r.skipped is None


def test_unavailable_rows_are_skipped_with_their_reason():
    log: list[str] = []
    runners = [FakeRunner("A", log), FakeRunner("B", log, fail_setup="no GPU here"), FakeRunner("C", log, fail_on_call=3)]
    results = measure_interleaved(runners, warmup=1, runs=4)
    a, b, c = results
    assert a.measured and a.stats.count == 4
    assert not b.measured and b.skipped == "no GPU here" and runners[1].calls == 0 and runners[1].closed
    # C: call 1 cold, call 2 warm-up, call 3 fails in the first timed round
    assert not c.measured and c.skipped == "failed while measuring: boom" and runners[2].closed
    assert not runners[0].closed  # measured runners are the caller's to close


def test_threads_and_inference_mode_are_set_and_restored():
    before = torch.get_num_threads()
    runner = FakeRunner("A", [])
    measure_interleaved([runner], warmup=0, runs=2, threads=1)
    assert runner.seen_threads == {1}
    assert runner.seen_inference == {True}
    assert torch.get_num_threads() == before
    assert not torch.is_inference_mode_enabled()


def test_duration_mode_runs_at_least_min_rounds():
    runner = FakeRunner("A", [])
    (result,) = measure_interleaved([runner], warmup=0, runs=None, duration=1e-9)
    assert result.stats.count == MIN_ROUNDS


def test_runs_and_duration_are_exclusive():
    with pytest.raises(ValueError):
        measure_interleaved([FakeRunner("A", [])], runs=3, duration=1.0)
    with pytest.raises(ValueError):
        measure_interleaved([FakeRunner("A", [])], runs=None, duration=None)


# ----------------------------------------------------------------------------------------------
# Stability of a row's timings (synthetic series, run order as measured)


def _ms(values) -> LatencyStats:
    return LatencyStats(tuple(v / 1e3 for v in values))


def test_steady_timings_are_stable():
    rng = np.random.default_rng(0)
    assert instability(_ms(2.0 + 0.1 * rng.standard_normal(100))) is None
    assert instability(_ms([2.0] * 5)) is None  # few runs alone are no instability


def test_isolated_slow_runs_point_at_another_process():
    times = [1.0] * 100
    times[40] = times[70] = 10.0  # two interrupted runs: p99 lands on them
    reason = instability(_ms(times))
    assert reason is not None and reason.startswith("p99 ")
    assert "2 run(s) took over 3× the median" in reason and "another process" in reason
    assert "thermal" not in reason and "only" not in reason


def test_a_drift_over_the_run_points_at_thermal_throttling():
    times = [1.0] * 30 + [2.0] * 30  # tail and spread are modest; the speed halved half-way
    stats = _ms(times)
    assert stats.p99 <= UNSTABLE_TAIL * stats.p50 and stats.std <= stats.mean
    reason = instability(stats)
    assert reason is not None and "slowed down" in reason and "thermal" in reason
    assert "1 ms in the first third, 2 ms in the last" in reason
    assert "sped up" in instability(_ms(times[::-1]))


def test_spread_over_the_mean_is_unstable():
    stats = _ms([0.1] * 20 + [5.0] * 3 + [0.1] * 20)  # std > mean: a few runs dominate
    assert stats.std > stats.mean
    assert instability(stats) is not None


def test_too_few_runs_is_named():
    reason = instability(_ms([1.0, 1.1, 0.9, 1.0, 5.0]))
    assert reason is not None
    assert "only 5 timed run(s)" in reason and "--runs 100" in reason
