"""Serving one exported graph: the Open Inference Protocol (v2) over HTTP, a dynamic batcher, Ray Serve,
a load test and a Triton model repository.

``model`` (one ONNX Runtime session and what the file declares) → ``protocol`` (OIP v2 encoding and
decoding, JSON and binary tensors; nothing else) → ``batching`` (the asyncio queue that batches
concurrent requests; ``preferred`` the batch size it forms, given or measured at start-up) → ``app`` (the ASGI application and its uvicorn server; ``metrics`` its
Prometheus counters) → ``ray_app`` (the same routes as a Ray Serve deployment with ``@serve.batch``).
``loadtest`` drives any OIP server with ``tritonclient``; ``repository`` writes a Triton model
repository. Heavy libraries (ray, tritonclient, uvicorn) are imported only by the modules that need them.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "ServedModel": "model",
    "build_app": "app",
    "serve_forever": "app",
    "serve_ray": "ray_app",
    "write_repository": "repository",
    "build_config": "repository",
    "loadtest": "loadtest",
    "LoadResult": "loadtest",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
