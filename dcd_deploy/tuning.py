"""Measured autotuning of the lowered form (``dcd-deploy export --tune``).

For every DCD convolution that has more than one lowered form, each candidate is exported on
its own (the layer alone, at the input shape it sees in the network) and timed on the target's
ONNX Runtime provider (CPU, or CUDA with the input and output bound on the GPU), candidates
interleaved round-robin with thread spinning off; the form with the lowest median wins. Layers
with one candidate (3×3 or strided) are not timed.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch

from .lowering.base import LayerInfo
from .lowering.costmodel import form_costs

TARGET_PROVIDERS = {"cpu": "cpu", "cuda": "cuda"}


class _Timed:
    """One candidate's session; on CUDA the input and output live on the GPU (IO binding)."""

    def __init__(self, graph: bytes, x: np.ndarray, provider: str, threads: int | None):
        from .runtime import create_session

        self.session = create_session(graph, provider, threads=threads, spinning=False, dynamic_shapes=False)
        self.feed = {self.session.get_inputs()[0].name: x}
        self.binding: Any = None
        if provider == "cuda":
            import onnxruntime as ort

            self.binding = self.session.io_binding()
            self._x = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self.binding.bind_ortvalue_input(self.session.get_inputs()[0].name, self._x)
            for out in self.session.get_outputs():
                self.binding.bind_output(out.name, "cuda", 0)

    def run(self) -> float:
        t = time.perf_counter()
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.session.run(None, self.feed)
        return time.perf_counter() - t


def _time_forms(layer: torch.nn.Module, info: LayerInfo, in_shape: tuple[int, ...], forms: list[str], threads: int | None,
                runs: int, provider: str = "cpu") -> dict[str, float]:
    from .lowering.dcd_conv import ConvLowering, LoweredDcdConv
    from .onnx_export import simplify

    x = torch.randn(*in_shape, generator=torch.Generator().manual_seed(0))
    sessions = {}
    for form in forms:
        lowered = LoweredDcdConv.from_layer(layer, info, None, ConvLowering(form, (in_shape[2], in_shape[3])))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lowered, (x,), buf, dynamo=False, input_names=["input"], output_names=["out"])
        graph, _ = simplify(onnx.load_from_string(buf.getvalue()))
        sessions[form] = _Timed(graph.SerializeToString(), x.numpy(), provider, threads)
    for s in sessions.values():
        for _ in range(3 if provider == "cuda" else 1):
            s.run()
    times: dict[str, list[float]] = {f: [] for f in forms}
    for _ in range(runs):
        for form, s in sessions.items():
            times[form].append(s.run())
    return {f: float(np.median(v)) for f, v in times.items()}


def tuned_form_chooser(threads: int | None = None, runs: int = 15, target: str = "cpu",
                       on_progress: Callable[[str], None] | None = None) -> Callable[[LayerInfo, tuple[int, ...]], str]:
    """A form chooser for :func:`dcd_deploy.lowering.lower_model` that times the candidates on
    ``target``'s provider ('cpu' or 'cuda'; raises ProviderUnavailableError if it is missing).

    The chooser needs the original layer; ``lower_model`` passes it as the ``layer`` keyword.
    Results are cached per (layer sizes, input shape), so repeated blocks are timed once.
    """
    from .runtime import check_available, provider_name

    provider = TARGET_PROVIDERS[target]
    check_available(provider_name(provider))
    cache: dict[tuple, str] = {}

    def choose(info: LayerInfo, in_shape: tuple[int, ...], layer: torch.nn.Module | None = None) -> str:
        forms = list(form_costs(info, in_shape, target))
        if len(forms) == 1 or layer is None:
            return forms[0]
        key = (info.kind, info.c_in, info.c_out, info.kernel, info.stride, info.latent, info.squeeze, info.pool, in_shape)
        if key not in cache:
            medians = _time_forms(layer, info, in_shape, forms, threads, runs, provider)
            cache[key] = min(medians, key=medians.get)
            if on_progress:
                timings = ", ".join(f"{f} {t * 1e3:.3f} ms" for f, t in medians.items())
                on_progress(f"  tuned on {target}: {info.summary()} at {in_shape[2]}×{in_shape[3]}: {timings} -> {cache[key]}")
        return cache[key]

    choose.wants_layer = True  # type: ignore[attr-defined]
    choose.target = target  # type: ignore[attr-defined]
    return choose
