"""The dynamic batcher: concurrent requests queue up, one worker runs them together.

Each request brings a batch of one or more samples and waits on a future. The worker takes the
oldest request and waits up to ``wait_s`` for the batch to fill, but only to as many samples as
the previous run carried (capped at ``max_batch``): clients answered together tend to come back
together, while a lone client (concurrency 1) is never made to wait for company that is not
coming. Then it takes requests in arrival order while their samples fit in ``max_batch``,
concatenates them, runs the model once in its own thread (one session call at a time: ONNX
Runtime's intra-op threads are the parallelism) and hands each request its slice of every output.
While the model runs, new requests queue, so under load a batch fills without waiting at all.

Preferred sizes (``preferred``, ascending, each ≤ ``max_batch``; Triton's ``preferred_batch_size``):
when at least the smallest preferred size waits, a run takes requests only up to the largest
preferred size that waits, so a deep queue drains in consecutive batches of the preferred size
rather than in batches of ``max_batch`` (which on a small CPU can be slower per sample). A single
request larger than that still runs whole (it is at most ``max_batch``), and the fill waits for no
more than the largest preferred size. Without ``preferred`` (or with ``max_batch``) it is the same.

At most ``max_queue`` requests wait: one more is refused at once (:class:`QueueFull`, HTTP 503),
never left hanging. A request whose client went away (its future cancelled) is skipped. A failing
model run fails the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable

import numpy as np


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class BatchQueue:
    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]], max_batch: int, wait_s: float,
                 max_queue: int, on_batch: Callable[[int], None] | None = None, preferred: tuple[int, ...] = ()):
        self._run, self.max_batch, self.wait_s, self.max_queue = run, max_batch, wait_s, max_queue
        self.preferred = preferred
        self._on_batch = on_batch
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._last_run = 1  # samples in the previous model run: how many to wait for

    @property
    def preferred(self) -> tuple[int, ...]:
        return self._preferred

    @preferred.setter
    def preferred(self, sizes: tuple[int, ...]) -> None:
        """Set the preferred sizes (the server sets them once measured); ``()`` means ``max_batch``."""
        sizes = tuple(sorted(set(sizes))) or (self.max_batch,)
        if sizes[0] < 1 or sizes[-1] > self.max_batch:
            raise ValueError(f"preferred batch sizes {sizes} are not within 1..{self.max_batch}")
        self._preferred = sizes

    def _cap(self, waiting: int) -> int:
        """Most samples the next run takes: the largest preferred size that waits, else all that wait."""
        fitting = [p for p in self._preferred if p <= waiting]
        return fitting[-1] if fitting else self.max_batch

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcd-serve-model")
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with :class:`QueueFull`."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(QueueFull("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, batch: np.ndarray) -> list[np.ndarray]:
        """The model's outputs for ``batch`` (run together with other waiting requests)."""
        if self._worker is None:
            raise QueueFull("the server is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are already waiting (--max-queue {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        self._wakeup.set()
        return await future

    def _waiting_samples(self) -> int:
        return sum(b.shape[0] for b, f in self._pending if not f.done())

    async def _fill(self) -> None:
        """Wait up to ``wait_s`` for the queue to hold as many samples as the previous run (at most the
        largest preferred size)."""
        target = min(self._preferred[-1], self._last_run)
        deadline = time.monotonic() + self.wait_s
        while self._waiting_samples() < target and (left := deadline - time.monotonic()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=left)
            except asyncio.TimeoutError:
                break

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        cap = self._cap(self._waiting_samples())
        taken, samples = [], 0
        while self._pending:
            batch, future = self._pending[0]
            if future.done():  # the client went away
                self._pending.popleft()
                continue
            if taken and samples + batch.shape[0] > cap:
                break
            taken.append(self._pending.popleft())
            samples += batch.shape[0]
        return taken

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.wait_s > 0:
                await self._fill()
            taken = self._take()
            if not taken:
                continue
            inputs = [b for b, _ in taken]
            batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
            self._last_run = batch.shape[0]
            if self._on_batch is not None:
                self._on_batch(batch.shape[0])
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as exc:  # noqa: BLE001 - the requests of this batch fail, the server goes on
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for part, future in taken:
                stop = start + part.shape[0]
                if not future.done():
                    future.set_result([o[start:stop] for o in outputs])
                start = stop
