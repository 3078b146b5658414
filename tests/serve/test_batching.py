"""The dynamic batcher: concurrent requests share model runs, a full queue refuses at once, a failure stays local."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from dcd_deploy.serve.batching import BatchQueue, QueueFull


class Recorder:
    """A model stand-in: records batch sizes; output = 2·x summed per sample; can be held on a gate."""

    def __init__(self, fail_on: int | None = None):
        self.sizes: list[int] = []
        self.seen: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.gate.wait(10)
        self.sizes.append(batch.shape[0])
        self.seen.extend(batch[:, 0].tolist())
        if self.fail_on is not None and self.fail_on in batch[:, 0]:
            raise RuntimeError("model failed")
        return [batch.sum(axis=1) * 2, batch[:, :1]]


def _sample(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3), value, np.float32)


def test_concurrent_requests_share_runs_and_get_their_own_slices():
    model = Recorder()

    async def main():
        queue = BatchQueue(model, max_batch=8, wait_s=0.05, max_queue=64)
        queue.start()
        model.gate.clear()  # hold the first run so that the others queue up behind it
        first = asyncio.ensure_future(queue.submit(_sample(0)))
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(queue.submit(_sample(i, 2 if i % 3 == 0 else 1))) for i in range(1, 13)]
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await queue.stop()
        return results

    results = asyncio.run(main())
    for i, (summed, head) in enumerate(results):
        n = 2 if i and i % 3 == 0 else 1
        np.testing.assert_array_equal(summed, np.full(n, 6 * i, np.float32))
        assert head.shape == (n, 1)
    assert sum(model.sizes) == 1 + 12 + 4
    assert max(model.sizes) <= 8 and len(model.sizes) < 13  # batched, never above max_batch


def test_a_full_queue_refuses_at_once():
    model = Recorder()

    async def main():
        queue = BatchQueue(model, max_batch=1, wait_s=0, max_queue=2)
        queue.start()
        model.gate.clear()
        running = asyncio.ensure_future(queue.submit(_sample(1)))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in the model
        waiting = [asyncio.ensure_future(queue.submit(_sample(2))), asyncio.ensure_future(queue.submit(_sample(3)))]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="--max-queue 2"):
            await queue.submit(_sample(4))
        model.gate.set()
        done = await asyncio.gather(running, *waiting)
        await queue.stop()
        return done

    assert len(asyncio.run(main())) == 3


def test_a_failing_run_fails_its_batch_only_and_cancelled_requests_are_skipped():
    model = Recorder(fail_on=5)

    async def main():
        queue = BatchQueue(model, max_batch=1, wait_s=0, max_queue=8)
        queue.start()
        model.gate.clear()
        blocker = asyncio.ensure_future(queue.submit(_sample(1)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(queue.submit(_sample(7)))
        bad = asyncio.ensure_future(queue.submit(_sample(5)))
        good = asyncio.ensure_future(queue.submit(_sample(2)))
        await asyncio.sleep(0)
        gone.cancel()  # a client that went away
        model.gate.set()
        out = await asyncio.gather(blocker, bad, good, return_exceptions=True)
        await queue.stop()
        return out

    blocker, bad, good = asyncio.run(main())
    assert isinstance(bad, RuntimeError)
    np.testing.assert_array_equal(good[0], [12.0])
    assert 7.0 not in model.seen and model.sizes == [1, 1, 1]  # the cancelled one never ran


def test_a_lone_client_does_not_wait_for_company():
    """After runs of one sample the worker waits for one sample: a long --batch-wait-ms never delays concurrency 1."""
    model = Recorder()

    async def main():
        queue = BatchQueue(model, max_batch=16, wait_s=60, max_queue=8)
        queue.start()
        answers = [await asyncio.wait_for(queue.submit(_sample(i)), timeout=20) for i in range(3)]
        await queue.stop()
        return answers

    assert len(asyncio.run(main())) == 3 and model.sizes == [1, 1, 1]
