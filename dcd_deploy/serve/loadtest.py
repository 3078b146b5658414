"""``dcd-deploy loadtest``: what ``perf_analyzer`` reports, measured with ``tritonclient``.

For each concurrency level C, C threads each hold one ``tritonclient.http`` client and send
single-sample requests (binary tensors, random data of the model's declared input) back to back:
a fixed total (``requests``) or for ``duration`` seconds. Each thread sends one untimed request
first. Reported per level: throughput (answered inferences per second of wall time), p50/p90/p99
latency of the answered requests (ms) and errors (refused or failed requests, with the first few
messages). Nothing is retried.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Any

import numpy as np

from ..errors import DcdDeployError, InputError, summarize_exception

NUMPY_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}


class LoadTestFailed(DcdDeployError):
    """No request of a load test was answered."""

    exit_code = 1


@dataclasses.dataclass
class Level:
    concurrency: int
    seconds: float
    latencies_s: list[float]
    errors: int
    messages: list[str]

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q) * 1e3) if self.latencies_s else None

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests": self.answered + self.errors, "answered": self.answered,
                "errors": self.errors, "seconds": self.seconds, "throughput": self.throughput,
                "p50": self.percentile_ms(50), "p90": self.percentile_ms(90), "p99": self.percentile_ms(99),
                "error_messages": self.messages}


@dataclasses.dataclass
class LoadResult:
    url: str
    model: str
    input: dict[str, Any]
    requests: int | None
    duration: float | None
    levels: list[Level]
    date: str

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "input": self.input, "requests": self.requests,
                "duration": self.duration, "date": self.date, "latency_unit": "ms", "throughput_unit": "inferences/s",
                "levels": [lv.to_dict() for lv in self.levels]}

    def render(self) -> str:
        from ..reporting import table

        shape = "×".join(map(str, self.input["shape"]))
        rows = [[str(d["concurrency"]), str(d["requests"]), f"{d['throughput']:.1f}",
                 *(f"{d[k]:.1f}" if d[k] is not None else "—" for k in ("p50", "p90", "p99")), str(d["errors"])]
                for d in (lv.to_dict() for lv in self.levels)]
        head = (f"dcd-deploy loadtest: {self.model} at {self.url}, {self.input['name']} {shape} "
                f"{self.input['datatype']} per request, binary tensors\n")
        body = table(["concurrency", "requests", "infer/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows, align="rrrrrrr")
        notes = [f"  c={lv.concurrency}: {m}" for lv in self.levels for m in lv.messages]
        body = body.rstrip("\n") + "\n"
        return head + body + ("first errors:\n" + "\n".join(notes) + "\n" if notes else "")

    def raise_if_nothing_answered(self) -> None:
        if not any(lv.answered for lv in self.levels):
            first = next((m for lv in self.levels for m in lv.messages), "no message")
            raise LoadTestFailed(f"No request was answered ({first}).", "Check that the server runs and serves this model.")


def _client(url: str, timeout_s: float):
    import tritonclient.http as httpclient

    ssl = url.startswith("https://")
    host = url.split("://", 1)[-1].rstrip("/")
    return httpclient.InferenceServerClient(host, ssl=ssl, connection_timeout=timeout_s, network_timeout=timeout_s)


def model_input(url: str, model: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The model's input (name, datatype, shape with batch 1) as the server declares it; InputError if unreachable."""
    from tritonclient.utils import InferenceServerException

    try:
        client = _client(url, timeout_s)
        meta = client.get_model_metadata(model)
        client.close()
    except InferenceServerException as exc:
        raise InputError(f"{url} does not serve model {model!r}: {exc.message()}", "Check --model and the URL.") from None
    except Exception as exc:  # noqa: BLE001 - socket errors of several kinds
        raise InputError(f"Cannot reach {url}: {summarize_exception(exc)}.",
                         "Start the server first (dcd-deploy serve MODEL.onnx) and check host and port.") from None
    spec = meta["inputs"][0]
    shape = [1] + [int(d) for d in spec["shape"][1:]]
    if spec["datatype"] not in NUMPY_TYPES or min(shape) < 1:
        raise InputError(f"Model {model!r} takes {spec['datatype']} {spec['shape']}; the load test sends float tensors "
                         "of a known size.", "Serve a model exported at a fixed image size.")
    return {"name": spec["name"], "datatype": spec["datatype"], "shape": shape}


def _worker(url: str, model: str, spec: dict, tickets: Any, deadline: list[float], start: threading.Barrier,
            level: Level, lock: threading.Lock, timeout_s: float, seed: int) -> None:
    import tritonclient.http as httpclient

    data = np.random.default_rng(seed).standard_normal(spec["shape"]).astype(NUMPY_TYPES[spec["datatype"]])
    client = _client(url, timeout_s)
    tensor = httpclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
    tensor.set_data_from_numpy(data, binary_data=True)

    def once() -> tuple[float | None, str | None]:
        t0 = time.perf_counter()
        try:
            client.infer(model, [tensor])
        except Exception as exc:  # noqa: BLE001 - a refused or failed request is counted, not raised
            text = exc.message() if hasattr(exc, "message") else summarize_exception(exc)
            return None, str(text)
        return time.perf_counter() - t0, None

    once()  # untimed warm-up (connection, first batch)
    start.wait()
    try:
        while next(tickets) and time.perf_counter() < deadline[0]:
            latency, error = once()
            with lock:
                if latency is not None:
                    level.latencies_s.append(latency)
                else:
                    level.errors += 1
                    if len(level.messages) < 3:
                        level.messages.append(error or "")
    finally:
        client.close()


def run_level(url: str, model: str, spec: dict, concurrency: int, requests: int | None, duration: float | None,
              timeout_s: float = 30.0) -> Level:
    level = Level(concurrency, 0.0, [], 0, [])
    tickets = iter(itertools.chain(itertools.repeat(True, requests), itertools.repeat(False))) if requests \
        else itertools.repeat(True)
    lock, deadline = threading.Lock(), [float("inf")]
    locked_tickets = _Locked(tickets)
    start = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=_worker, args=(url, model, spec, locked_tickets, deadline, start, level, lock,
                                                      timeout_s, i), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + duration if duration else float("inf")
    for t in threads:
        t.join()
    level.seconds = time.perf_counter() - t0
    return level


class _Locked:
    """A thread-safe ``next`` over an iterator."""

    def __init__(self, it: Any):
        self._it, self._lock = it, threading.Lock()

    def __next__(self) -> Any:
        with self._lock:
            return next(self._it)


def loadtest(url: str, model: str, concurrency: list[int], requests: int | None = None, duration: float | None = None,
             timeout_s: float = 30.0, on_level: Any = None) -> LoadResult:
    """Load ``url``'s ``model`` at each concurrency level in turn; see the module docstring."""
    if (requests is None) == (duration is None):
        raise InputError("Give one of --requests and --duration.", "E.g. --requests 200 or --duration 10.")
    spec = model_input(url, model, timeout_s)
    levels = []
    for c in concurrency:
        levels.append(run_level(url, model, spec, c, requests, duration, timeout_s))
        if on_level is not None:
            on_level(levels[-1])
    return LoadResult(url, model, spec, requests, duration, levels, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
