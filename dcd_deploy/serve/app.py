"""The OIP v2 HTTP endpoints as an ASGI application (Starlette), served by uvicorn in one process.

:func:`dispatch` maps one request to one response for any *backend*: an object with ``model`` (a
:class:`~dcd_deploy.serve.model.ServedModel` or the same attributes), ``metrics``
(:class:`~dcd_deploy.serve.metrics.ServeMetrics`), ``ready`` and ``async infer(batch)``. The
in-process server's backend is :class:`LocalBackend` (a :class:`~dcd_deploy.serve.batching.BatchQueue`
in front of the session); the Ray Serve deployment (``ray_app``) is another backend of the same
routes. Paths::

    GET  /v2                              server metadata          GET /v2/health/live, /v2/health/ready
    GET  /v2/models/NAME[/versions/1]     model metadata           GET /v2/models/NAME[/versions/1]/ready
    POST /v2/models/NAME[/versions/1]/infer                        GET /metrics (Prometheus)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import InputError, summarize_exception
from .batching import BatchQueue, QueueFull
from .metrics import CONTENT_TYPE, ServeMetrics
from .model import ServedModel
from .preferred import BUDGET_S, PreferredBatch, measure_model, plan
from .protocol import HEADER_LENGTH, ProtocolError, decode_infer_request, decompress, encode_infer_response, error_body

log = logging.getLogger("dcd_deploy.serve")
_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer)?/?$")
EXTENSIONS = ["binary_tensor_data", "statistics"]


class Stopped(Exception):
    """SIGTERM: the server stopped on request (exit status 0)."""


def _json(obj: Any, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(obj).encode(), status_code=status, media_type="application/json")


def _error(message: str, status: int):
    from starlette.responses import Response

    return Response(error_body(message), status_code=status, media_type="application/json")


async def _infer(request: Any, backend: Any):
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response

    model, metrics = backend.model, backend.metrics
    start = time.perf_counter()
    try:
        body = decompress(await request.body(), request.headers.get("content-encoding"))
        decoded = decode_infer_request(body, request.headers.get(HEADER_LENGTH.lower()), model.inputs,
                                       model.outputs, model.max_batch)
        outputs = await backend.infer(decoded.batch)
    except ClientDisconnect:  # the client went away mid-body: nobody to answer
        metrics.request(499)
        return Response(status_code=400)
    except ProtocolError as exc:
        metrics.request(exc.status)
        return _error(exc.message, exc.status)
    except QueueFull as exc:
        metrics.request(503)
        return _error(f"The server is at capacity ({exc}); retry later.", 503)
    except Exception as exc:  # noqa: BLE001 - a failing model run fails this request only
        log.exception("infer failed")
        metrics.request(500)
        return _error(f"The model failed on this request: {summarize_exception(exc)}.", 500)
    values = dict(zip((o.name for o in model.outputs), outputs))
    content, headers = encode_infer_response(model.name, decoded, values, model.outputs)
    metrics.request(200, time.perf_counter() - start, decoded.size)
    media = headers.pop("Content-Type")
    return Response(content, status_code=200, headers=headers, media_type=media)


def _model_route(request: Any, backend: Any, match: re.Match):
    model = backend.model
    name, version, tail = match["name"], match["version"], match["tail"]
    if name != model.name or version not in (None, "1"):
        what = f"model {name!r}" + (f" version {version!r}" if version else "")
        return _error(f"Unknown {what}; this server serves {model.name!r} (version 1).", 404)
    wanted = "POST" if tail == "/infer" else "GET"
    if request.method != wanted:
        return _error(f"{request.url.path} takes {wanted}, not {request.method}.", 405)
    if tail == "/ready":
        return _json({"name": model.name, "ready": backend.ready}, 200 if backend.ready else 503)
    return None if tail == "/infer" else _json(model.metadata())


async def dispatch(request: Any, backend: Any):
    """The response to one HTTP request (a Starlette ``Request``) for ``backend``."""
    from starlette.responses import Response

    path = request.url.path.rstrip("/") or "/"
    if path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics") and request.method != "GET":
        return _error(f"{path} takes GET, not {request.method}.", 405)
    if path == "/v2/health/live":
        return _json({"live": True})
    if path == "/v2/health/ready":
        return _json({"ready": backend.ready}, 200 if backend.ready else 503)
    if path == "/v2":
        return _json({"name": "dcd-deploy", "version": __version__, "extensions": EXTENSIONS})
    if path == "/metrics":
        return Response(backend.metrics.render(), media_type=CONTENT_TYPE)
    match = _MODEL_PATH.match(path)
    if match is None:
        return _error(f"No endpoint {request.method} {path}; this server speaks the Open Inference Protocol v2 "
                      "(/v2/health/ready, /v2/models/NAME, /v2/models/NAME/infer).", 404)
    response = _model_route(request, backend, match)
    return response if response is not None else await _infer(request, backend)


class LocalBackend:
    """The in-process backend: a batching queue in front of one ONNX Runtime session.

    With ``--preferred-batch auto`` the preferred size is measured on the session (in a thread) after
    the queue starts; the server reports ready (``/v2/health/ready``) only once it is chosen.
    """

    def __init__(self, model: ServedModel, wait_s: float, max_queue: int, preferred: str | tuple[int, ...] = "auto"):
        self.model = model
        self.metrics = ServeMetrics(model.name)
        self.queue = BatchQueue(model.run, model.max_batch, wait_s, max_queue, on_batch=self.metrics.batch)
        self.preferred = plan(preferred, model)  # None: measured at start
        self.ready = False
        self._choosing: asyncio.Task | None = None

    async def infer(self, batch):
        self.metrics.queue_depth.labels(self.model.name).set(self.queue.depth)
        return await self.queue.submit(batch)

    def _use(self, preferred: PreferredBatch) -> None:
        self.preferred = preferred
        self.queue.preferred = preferred.sizes
        self.model.parameters.update(preferred.parameters())
        self.metrics.preferred_batch.labels(self.model.name).set(preferred.largest)

    def start(self, on_ready: Callable[[], None] | None = None) -> None:
        self.queue.start()

        def ready() -> None:
            self.ready = True
            if on_ready is not None:
                on_ready()

        if self.preferred is not None:
            self._use(self.preferred)
            ready()
            return

        async def choose() -> None:
            try:
                chosen = await asyncio.to_thread(measure_model, self.model)
            except Exception:  # noqa: BLE001 - a model that fails here fails its requests too; serve them the full batch
                log.exception("measuring the preferred batch failed; preferring --max-batch")
                chosen = PreferredBatch((self.model.max_batch,))
            self._use(chosen)
            ready()

        self._choosing = asyncio.get_running_loop().create_task(choose())

    async def stop(self) -> None:
        self.ready = False
        if self._choosing is not None:
            self._choosing.cancel()
            await asyncio.gather(self._choosing, return_exceptions=True)
        await self.queue.stop()


def build_app(model: ServedModel, wait_s: float = 0.002, max_queue: int = 256, on_ready: Callable[[], None] | None = None,
              preferred: str | tuple[int, ...] = "auto"):
    """The Starlette application serving ``model``; its lifespan starts and stops the batching queue
    (``on_ready`` is called once the server is ready: after the preferred batch is measured)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    backend = LocalBackend(model, wait_s, max_queue, preferred)

    async def endpoint(request):
        return await dispatch(request, backend)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        backend.start(on_ready)
        try:
            yield
        finally:
            await backend.stop()

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST", "PUT", "DELETE"])], lifespan=lifespan)
    app.state.backend = backend
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a taken port or a bad host is an :class:`InputError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"Cannot listen on host {host!r}: {exc.strerror}.", "Pass an address such as --host 127.0.0.1.") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        taken = exc.errno == errno.EADDRINUSE
        problem = f"Port {port} on {host} is taken" if taken else f"Cannot listen on {host}:{port}"
        raise InputError(f"{problem} ({exc.strerror}).",
                         "Stop what holds it or choose another --port." if taken else "Choose another --host or --port.") from None
    sock.set_inheritable(True)
    return sock


def raise_stopped(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop serving by raising :class:`Stopped`."""
    raise Stopped


def run_uvicorn(app: Any, sock: socket.socket, graceful_s: float = 5.0) -> None:
    """Serve ``app`` on ``sock`` until SIGINT (KeyboardInterrupt) or SIGTERM (:class:`Stopped`)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_s, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, raise_stopped)  # uvicorn re-raises the signal once it has shut down
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def serve_forever(model_path: str, name: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                  max_batch: int = 16, batch_wait_ms: float = 2.0, providers: str = "cpu", threads: int | None = None,
                  max_queue: int = 256, preferred_batch: str = "auto", say: Callable[[str], None] = print) -> None:
    """``dcd-deploy serve``: load the model, listen, serve until Ctrl-C (KeyboardInterrupt) or SIGTERM (returns)."""
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        model = ServedModel(model_path, name, providers, threads, max_batch)

        def ready() -> None:
            say(f"serving {model.name!r} ({model.precision}, {model.provider}, max batch {model.max_batch}, "
                f"{app.state.backend.preferred.describe()}) at {where} "
                f"(Open Inference Protocol v2; metrics at {where}/metrics); Ctrl-C or SIGTERM stops")

        app = build_app(model, batch_wait_ms / 1e3, max_queue, on_ready=ready, preferred=preferred_batch)
        sock = bind(host, port)
        where = f"http://{host}:{sock.getsockname()[1]}"
        if app.state.backend.preferred is None:
            say(f"measuring the preferred batch (about {BUDGET_S:.0f} s; /v2/health/ready says false until then)")
        run_uvicorn(app, sock)
    except Stopped:
        say("stopped (SIGTERM)")
    except OSError as exc:  # e.g. out of file descriptors: an environment problem, said in one sentence
        raise InputError(f"The server stopped: {summarize_exception(exc)}.", "Check the host and port.") from None
