"""Preferred batch sizes: the queue drains in batches of the preferred size, ``auto`` picks the fastest
size from injected timings (no real clock), explicit sizes are checked, the server is ready only once chosen."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from dcd_deploy.errors import InputError
from dcd_deploy.serve.batching import BatchQueue
from dcd_deploy.serve.model import ServedModel
from dcd_deploy.serve.preferred import PreferredBatch, candidates, choose, measure, parse_spec, plan

from test_batching import Recorder, _sample


def _drain(preferred: tuple[int, ...], requests: list[int], max_batch: int = 16) -> list[int]:
    """Model run sizes when ``requests`` (samples each) queue up behind a held first run of one sample."""
    model = Recorder()

    async def main():
        queue = BatchQueue(model, max_batch=max_batch, wait_s=0, max_queue=64, preferred=preferred)
        queue.start()
        model.gate.clear()
        first = asyncio.ensure_future(queue.submit(_sample(-1)))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in the model
        rest = [asyncio.ensure_future(queue.submit(_sample(i, n))) for i, n in enumerate(requests)]
        await asyncio.sleep(0)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await queue.stop()
        return results

    results = asyncio.run(main())
    for (summed, _), i, n in zip(results[1:], range(len(requests)), requests):
        np.testing.assert_array_equal(summed, np.full(n, 6 * i, np.float32))  # each request its own slice
    return model.sizes


def test_a_deep_queue_drains_in_batches_of_the_preferred_size():
    assert _drain((4,), [1] * 10) == [1, 4, 4, 2]
    assert _drain((), [1] * 10) == [1, 10]  # no preference: up to max_batch, as before
    assert _drain((2, 8), [1] * 11) == [1, 8, 2, 1]  # the largest preferred size that waits


def test_a_request_above_the_preferred_size_runs_whole():
    assert _drain((4,), [6, 1, 1]) == [1, 6, 2]
    assert _drain((4,), [1, 1, 3, 1]) == [1, 2, 4]  # 1+1+3 passes 4: the 3 opens the next run


def test_preferred_sizes_stay_within_max_batch():
    queue = BatchQueue(lambda b: [b], max_batch=8, wait_s=0, max_queue=4)
    assert queue.preferred == (8,)
    with pytest.raises(ValueError, match="1..8"):
        queue.preferred = (16,)


class FakeSession:
    """``time_run`` and ``clock`` for :func:`measure`: each run takes ``size / throughput[size]`` fake seconds."""

    def __init__(self, throughput: dict[int, float], slow_first: int | None = None):
        self.throughput, self.now, self.runs = throughput, 0.0, []
        self.slow_first = slow_first

    def clock(self) -> float:
        return self.now

    def time_run(self, size: int) -> float:
        seconds = size / self.throughput[size]
        if size == self.slow_first and self.runs.count(size) == 1:  # the first timed run is 10x slower
            seconds *= 10
        self.runs.append(size)
        self.now += seconds
        return seconds


def test_auto_picks_the_fastest_size_from_injected_timings():
    fake = FakeSession({1: 40.0, 2: 80.0, 4: 100.0, 8: 90.0, 16: 60.0}, slow_first=4)
    chosen = measure(fake.time_run, 16, budget_s=3.0, clock=fake.clock)
    assert chosen.sizes == (4,) and chosen.measured
    assert chosen.throughput == pytest.approx({1: 40.0, 2: 80.0, 4: 100.0, 8: 90.0, 16: 60.0})  # medians drop the outlier
    assert fake.runs[:5] == [1, 2, 4, 8, 16] and fake.runs[5:10] == [1, 2, 4, 8, 16]  # warm-up, round 1
    assert fake.runs[10:15] == [16, 8, 4, 2, 1]  # rounds alternate direction
    assert chosen.seconds <= 3.0 and chosen.rounds >= 3  # the next round would have passed the budget
    assert chosen.parameters() == {"preferred_batch_size": [4], "preferred_batch_source": "measured",
                                   "preferred_batch_throughput": {"1": 40.0, "2": 80.0, "4": 100.0, "8": 90.0,
                                                                  "16": 60.0}}


def test_auto_prefers_the_smaller_size_within_tolerance():
    assert choose({1: 40.0, 2: 97.0, 4: 100.0, 8: 101.0}) == 2
    assert choose({1: 40.0, 2: 90.0, 4: 100.0}) == 4
    assert candidates(16) == [1, 2, 4, 8, 16] and candidates(12) == [1, 2, 4, 8] and candidates(1) == [1]
    fake = FakeSession({1: 50.0, 2: 60.0})  # a slow model: one round fills the budget, still one round is measured
    assert measure(fake.time_run, 2, budget_s=0.01, clock=fake.clock).rounds == 1


def test_explicit_sizes_are_parsed_and_checked(served_onnx, fixed_batch_onnx):
    assert parse_spec("auto") == "auto" and parse_spec("8,2,8") == (2, 8)
    for bad in ("0", "-1", "abc", "auto,4", ""):
        with pytest.raises(ValueError):
            parse_spec(bad)
    model = ServedModel(served_onnx, max_batch=8)
    assert plan("2,4", model) == PreferredBatch((2, 4)) and plan("auto", model) is None
    with pytest.raises(InputError, match="--preferred-batch 16 is above the maximum batch 8"):
        plan("4,16", model)
    assert plan("auto", ServedModel(fixed_batch_onnx)) == PreferredBatch((2,))  # a fixed batch is not measured
    assert plan("auto", ServedModel(served_onnx, max_batch=1)) == PreferredBatch((1,))


def test_the_server_is_ready_only_once_the_preferred_batch_is_chosen(served_onnx, monkeypatch):
    from dcd_deploy.serve import app

    release, called = threading.Event(), []
    monkeypatch.setattr(app, "measure_model", lambda model: release.wait(10) and PreferredBatch((2,), {1: 1.0, 2: 3.0}))
    backend = app.LocalBackend(ServedModel(served_onnx, max_batch=8), wait_s=0, max_queue=8)

    async def main():
        backend.start(on_ready=lambda: called.append(True))
        await asyncio.sleep(0.05)
        before = backend.ready, list(called)
        release.set()
        for _ in range(200):
            if backend.ready:
                break
            await asyncio.sleep(0.01)
        after = backend.ready, list(called), backend.queue.preferred
        await backend.stop()
        return before, after

    before, after = asyncio.run(main())
    assert before == (False, []) and after == (True, [True], (2,))
    assert backend.model.parameters["preferred_batch_size"] == [2]
    assert b"dcd_serve_preferred_batch_size{model=\"digits\"} 2.0" in backend.metrics.render()


def test_preferred_batch_usage_errors_are_one_paragraph(served_onnx, fixed_batch_onnx, run_cli, expect_user_error):
    for bad in ("0", "abc", "auto,4"):
        expect_user_error(run_cli("serve", served_onnx, "--preferred-batch", bad), "--preferred-batch", bad)
    expect_user_error(run_cli("serve", served_onnx, "--preferred-batch", "32"),
                      "--preferred-batch 32 is above the maximum batch 16")
    expect_user_error(run_cli("serve", served_onnx, "--max-batch", "4", "--preferred-batch", "2,8", "--ray"),
                      "--preferred-batch 8 is above the maximum batch 4")
    expect_user_error(run_cli("serve", fixed_batch_onnx, "--preferred-batch", "4"),  # the file's fixed batch 2
                      "--preferred-batch 4 is above the maximum batch 2")
