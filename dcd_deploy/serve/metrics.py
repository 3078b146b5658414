"""The server's Prometheus metrics: requests by outcome, inferences, batch sizes, latency, queue depth,
the preferred batch size.

Each server owns its registry (two servers in one process, as in tests, do not collide); ``GET
/metrics`` renders it in Prometheus' text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    def __init__(self, model: str):
        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter("dcd_serve_requests", "Infer requests by HTTP status code.", ["model", "code"],
                                registry=self.registry)
        self.inferences = Counter("dcd_serve_inferences", "Samples inferred (a request may carry several).",
                                  ["model"], registry=self.registry)
        self.batch_size = Histogram("dcd_serve_batch_size", "Samples per model run (after dynamic batching).",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.latency = Histogram("dcd_serve_request_latency_seconds", "Infer request latency in the server, "
                                 "from the body read to the response.", ["model"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.queue_depth = Gauge("dcd_serve_queue_depth", "Requests waiting for a model run.", ["model"],
                                 registry=self.registry)
        self.preferred_batch = Gauge("dcd_serve_preferred_batch_size", "The batch the server forms when more samples "
                                     "wait (--preferred-batch; the largest when several).", ["model"],
                                     registry=self.registry)

    def request(self, code: int, seconds: float | None = None, samples: int = 0) -> None:
        self.requests.labels(self.model, str(code)).inc()
        if samples:
            self.inferences.labels(self.model).inc(samples)
        if seconds is not None:
            self.latency.labels(self.model).observe(seconds)

    def batch(self, samples: int) -> None:
        self.batch_size.labels(self.model).observe(samples)

    def render(self) -> bytes:
        return generate_latest(self.registry)
