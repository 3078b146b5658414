"""The same OIP v2 endpoints as a Ray Serve application: replicas on any node of a Ray cluster.

A deployment is a small class: ``__init__`` opens the session (:class:`~dcd_deploy.serve.model.ServedModel`),
one ``@serve.batch`` method runs a batch, ``__call__`` decodes and encodes through the same
:func:`~dcd_deploy.serve.app.dispatch` as the in-process server. ``@serve.batch`` counts samples,
not requests (``batch_size_fn``), and its maximum batch size is the preferred batch
(``--preferred-batch``, the largest when several; measured in ``__init__`` for ``auto``, so the replica
is ready only once it is chosen); a single request larger than that (at most ``--max-batch``) runs
alone, outside the batcher. Ray's proxy queues at
most ``--max-queue`` requests per replica and refuses the rest with 503. ``/metrics`` on the
application is the answering replica's own registry; Ray's metrics port has the cluster-wide
``ray_serve_*`` series.

:func:`serve_ray` starts a local Ray instance (and stops it, daemons included, on exit) or joins
an existing cluster (``--address``: only this application is removed on exit, and Serve itself
only if it then runs nothing else). The model file must be readable at the same path on every node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import time
from collections.abc import Callable

import numpy as np
import ray
from ray import serve

from ..errors import InputError, summarize_exception
from .app import Stopped, raise_stopped, bind, dispatch
from .metrics import ServeMetrics
from .model import ServedModel
from .preferred import plan, resolve

DEFAULT_MAX_ONGOING = 64  # Ray's default (5) starves the batcher: a replica never sees a full batch


def samples(batches: list[np.ndarray]) -> int:
    """``batch_size_fn`` of ``@serve.batch``: a batch's size is its number of samples."""
    return sum(int(b.shape[0]) for b in batches)


@serve.deployment
class OipDeployment:
    def __init__(self, model_path: str, name: str, provider: str, threads: int | None, max_batch: int, wait_s: float,
                 preferred: str | tuple[int, ...] = "auto"):
        self.model = ServedModel(model_path, name, provider, threads, max_batch)
        self.model.parameters["ray_node_id"] = ray.get_runtime_context().get_node_id()
        self.preferred = resolve(preferred, self.model)
        self.model.parameters.update(self.preferred.parameters())
        self.metrics = ServeMetrics(self.model.name)
        self.metrics.preferred_batch.labels(self.model.name).set(self.preferred.largest)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcd-serve-model")
        self.run_batch.set_max_batch_size(self.preferred.largest)
        self.run_batch.set_batch_wait_timeout_s(wait_s)
        self.ready = True

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002, batch_size_fn=samples)
    async def run_batch(self, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
        batch = batches[0] if len(batches) == 1 else np.concatenate(batches)
        self.metrics.batch(batch.shape[0])
        outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.model.run, batch)
        results, start = [], 0
        for part in batches:
            results.append([o[start:start + part.shape[0]] for o in outputs])
            start += part.shape[0]
        return results

    async def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        if batch.shape[0] > self.preferred.largest:  # @serve.batch refuses an item above its maximum: run it whole
            self.metrics.batch(batch.shape[0])
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.model.run, batch)
        return await self.run_batch(batch)

    async def __call__(self, request):
        return await dispatch(request, self)


def application(model: ServedModel, replicas: int, wait_s: float, threads: int | None, max_queue: int,
                num_cpus: float = 1.0, preferred: str | tuple[int, ...] = "auto"):
    """The bound Ray Serve application serving ``model``."""
    options = {"num_replicas": replicas, "max_ongoing_requests": max(DEFAULT_MAX_ONGOING, 2 * model.max_batch),
               "max_queued_requests": max_queue, "ray_actor_options": {"num_cpus": num_cpus},
               "graceful_shutdown_timeout_s": 5, "graceful_shutdown_wait_loop_s": 0.5}
    return OipDeployment.options(**options).bind(str(model.path.resolve()), model.name, model.provider, threads,
                                                 model.max_batch, wait_s, preferred)


def _start_ray(address: str | None) -> None:
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise InputError(f"Cannot start or join {where}: {summarize_exception(exc)}.",
                         "Check --address (e.g. auto, or HEAD_IP:6379) and that the cluster runs.") from None
    signal.signal(signal.SIGTERM, raise_stopped)  # ray.init installs its own, which exits 15


def _stop(name: str, joined: bool) -> None:
    """Remove this application; stop Serve and Ray too unless they belong to a cluster we joined."""
    try:
        if joined:
            serve.delete(name)
            if not serve.status().applications:
                serve.shutdown()
        else:
            serve.shutdown()
    finally:
        ray.shutdown()


def serve_ray(model_path: str, name: str | None = None, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
              batch_wait_ms: float = 2.0, providers: str = "cpu", threads: int | None = None, max_queue: int = 256,
              replicas: int = 1, address: str | None = None, preferred_batch: str | tuple[int, ...] = "auto",
              say: Callable[[str], None] = print) -> None:
    """``dcd-deploy serve --ray``: run until Ctrl-C (KeyboardInterrupt) or SIGTERM (returns)."""
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        model = ServedModel(model_path, name, providers, threads, max_batch)  # a bad file fails here, before Ray
        given = plan(preferred_batch, model)  # explicit sizes above the maximum batch too; None: measured by each replica
        if address is None:
            bind(host, port).close()  # a taken port fails here, not inside Ray's proxy
        _start_ray(address)
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(application(model, replicas, batch_wait_ms / 1e3, threads, max_queue, preferred=preferred_batch),
                      name=model.name, route_prefix="/")
            chosen = given.describe() if given else "preferred batch measured by each replica (see /v2/models/NAME)"
            say(f"serving {model.name!r} with Ray Serve ({replicas} replica{'s' if replicas > 1 else ''}, max batch "
                f"{model.max_batch}, {chosen}) at http://{host}:{port} (Open Inference Protocol v2); Ctrl-C or SIGTERM stops")
            while True:
                time.sleep(0.5)
        finally:
            _stop(model.name, joined=address is not None)
    except Stopped:
        say("stopped (SIGTERM)")
