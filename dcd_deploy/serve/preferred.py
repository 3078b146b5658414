"""The preferred batch size: the batch the server forms when more samples wait (Triton's ``preferred_batch_size``).

A full ``--max-batch`` is not always the fastest batch: on a small CPU ONNX Runtime's throughput at
batch 16 can be below its throughput at batch 2 or 4 (cache-bound models such as MobileNetV2). With
``--preferred-batch auto`` the server measures its own session before it reports ready:

* candidates: the powers of two up to ``max_batch``;
* one untimed warm-up run per candidate (ONNX Runtime allocates at a new shape), then rounds that time
  one run of every candidate, interleaved (alternating direction, so a drift of the machine's load
  falls on all sizes alike), until the next round would pass ``budget_s`` (at least one round, at most
  ``max_rounds``);
* throughput of a size = size / median of its run times; the choice is the smallest size whose
  throughput is within ``tolerance`` of the best (a smaller batch waits less and fills more often).

The timing is injected (``time_run(batch) -> seconds`` and ``clock``), so the choice is testable
without a real model; :func:`session_timer` times a real model's ``run``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError

AUTO = "auto"
BUDGET_S = 3.0
TOLERANCE = 0.05
MAX_ROUNDS = 15


@dataclasses.dataclass(frozen=True)
class PreferredBatch:
    """The preferred sizes (ascending) and, when measured, the throughput per candidate (samples/s)."""

    sizes: tuple[int, ...]
    throughput: dict[int, float] = dataclasses.field(default_factory=dict)
    rounds: int = 0
    seconds: float = 0.0

    @property
    def measured(self) -> bool:
        return bool(self.throughput)

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def describe(self) -> str:
        sizes = ",".join(map(str, self.sizes))
        if not self.measured:
            return f"preferred batch {sizes}"
        table = ", ".join(f"b{b} {t:.1f}" for b, t in self.throughput.items())
        return f"preferred batch {sizes} (measured in {self.seconds:.1f} s, {self.rounds} rounds: {table} samples/s)"

    def parameters(self) -> dict:
        """The model metadata's parameters (OIP ``parameters`` of the model metadata response)."""
        out: dict = {"preferred_batch_size": list(self.sizes), "preferred_batch_source": "measured" if self.measured else "given"}
        if self.measured:
            out["preferred_batch_throughput"] = {str(b): round(t, 2) for b, t in self.throughput.items()}
        return out


def parse_spec(spec: str) -> str | tuple[int, ...]:
    """``'auto'`` or ``'N[,M...]'`` (positive integers) → ``'auto'`` or the sizes ascending; a ValueError says why."""
    text = spec.strip().lower()
    if text == AUTO:
        return AUTO
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise ValueError(f"{spec!r} is neither auto nor a comma-separated list of batch sizes (e.g. 4 or 4,8)") from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"{spec!r}: batch sizes are at least 1")
    return sizes


def check_sizes(sizes: Sequence[int], max_batch: int) -> None:
    too_big = [s for s in sizes if s > max_batch]
    if too_big:
        raise InputError(f"--preferred-batch {','.join(map(str, too_big))} is above the maximum batch {max_batch}.",
                         "Pass sizes up to --max-batch (a file with a fixed batch sets it), or auto.")


def candidates(max_batch: int) -> list[int]:
    """The powers of two up to ``max_batch``."""
    out, size = [], 1
    while size <= max_batch:
        out.append(size)
        size *= 2
    return out


def choose(throughput: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest size whose throughput is at least ``(1 - tolerance)`` × the best."""
    best = max(throughput.values())
    return min(b for b, t in throughput.items() if t >= (1 - tolerance) * best)


def measure(time_run: Callable[[int], float], max_batch: int, budget_s: float = BUDGET_S,
            tolerance: float = TOLERANCE, max_rounds: int = MAX_ROUNDS,
            clock: Callable[[], float] = time.perf_counter) -> PreferredBatch:
    """Time ``time_run(batch)`` (seconds of one run) over :func:`candidates` and choose (see the module docstring)."""
    sizes = candidates(max_batch)
    start = clock()
    for size in sizes:  # warm-up, untimed
        time_run(size)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    rounds = 0
    while rounds < max_rounds:
        round_start = clock()
        for size in (sizes if rounds % 2 == 0 else reversed(sizes)):
            times[size].append(time_run(size))
        rounds += 1
        now = clock()
        if now + (now - round_start) - start > budget_s:
            break
    throughput = {size: size / float(np.median(times[size])) for size in sizes}
    return PreferredBatch((choose(throughput, tolerance),), throughput, rounds, clock() - start)


def session_timer(run: Callable[[np.ndarray], object], shape: Sequence[int], dtype: np.dtype,
                  clock: Callable[[], float] = time.perf_counter) -> Callable[[int], float]:
    """``time_run`` for a model's ``run(batch)``: random inputs of ``shape`` with the batch axis replaced."""
    rng = np.random.default_rng(0)
    inputs: dict[int, np.ndarray] = {}

    def time_run(batch: int) -> float:
        if batch not in inputs:
            inputs[batch] = rng.standard_normal((batch, *shape[1:])).astype(dtype)
        t0 = clock()
        run(inputs[batch])
        return clock() - t0

    return time_run


def plan(spec: str | Sequence[int], model) -> PreferredBatch | None:
    """The preferred sizes ``spec`` gives a :class:`~dcd_deploy.serve.model.ServedModel` without measuring, or
    None when they are to be measured (:func:`measure_model`). Explicit sizes are checked against its
    maximum batch (:class:`InputError`); ``auto`` for a file with a fixed batch, another dynamic axis
    than the batch, or a maximum batch of 1 prefers the maximum batch."""
    sizes = parse_spec(spec) if isinstance(spec, str) else tuple(sorted(set(spec)))
    if sizes != AUTO:
        check_sizes(sizes, model.max_batch)
        return PreferredBatch(sizes)
    if model.fixed_batch is not None or any(d < 0 for d in model.input.shape[1:]) or model.max_batch == 1:
        return PreferredBatch((model.max_batch,))
    return None


def measure_model(model, budget_s: float = BUDGET_S) -> PreferredBatch:
    """:func:`measure` on the model's own session (its options: threads, spinning off)."""
    return measure(session_timer(model.run, model.input.shape, model.input.dtype), model.max_batch, budget_s)


def resolve(spec: str | Sequence[int], model, budget_s: float = BUDGET_S) -> PreferredBatch:
    """:func:`plan`, measured when it says so."""
    return plan(spec, model) or measure_model(model, budget_s)
