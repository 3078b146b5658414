"""Measured autotuning of the lowered form (``dcd-deploy export --tune``).

For every DCD convolution that has more than one lowered form, each candidate is exported on
its own (the layer alone, at the input shape it sees in the network) and timed on ONNX Runtime,
candidates interleaved round-robin with thread spinning off; the form with the lowest median
wins. Layers with one candidate (3×3 or strided) are not timed.
"""

from __future__ import annotations

import io
import time
import warnings
from typing import Callable

import numpy as np
import onnx
import torch

from .lowering.base import LayerInfo
from .lowering.costmodel import form_costs


def _time_forms(layer: torch.nn.Module, info: LayerInfo, in_shape: tuple[int, ...], forms: list[str], threads: int | None,
                runs: int) -> dict[str, float]:
    from .onnx_export import simplify
    from .lowering.dcd_conv import ConvLowering, LoweredDcdConv
    from .runtime import create_session

    x = torch.randn(*in_shape, generator=torch.Generator().manual_seed(0))
    sessions = {}
    for form in forms:
        lowered = LoweredDcdConv.from_layer(layer, info, None, ConvLowering(form, (in_shape[2], in_shape[3])))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lowered, (x,), buf, dynamo=False, input_names=["input"], output_names=["out"])
        graph, _ = simplify(onnx.load_from_string(buf.getvalue()))
        sessions[form] = create_session(graph.SerializeToString(), "cpu", threads=threads, spinning=False)
    feed = {"input": x.numpy()}
    for s in sessions.values():
        s.run(None, feed)
    times: dict[str, list[float]] = {f: [] for f in forms}
    for _ in range(runs):
        for form, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[form].append(time.perf_counter() - t)
    return {f: float(np.median(v)) for f, v in times.items()}


def tuned_form_chooser(threads: int | None = None, runs: int = 15,
                       on_progress: Callable[[str], None] | None = None) -> Callable[[LayerInfo, tuple[int, ...]], str]:
    """A form chooser for :func:`dcd_deploy.lowering.lower_model` that times the candidates.

    The chooser needs the original layer; ``lower_model`` passes it as the ``layer`` keyword.
    Results are cached per (layer sizes, input shape), so repeated blocks are timed once.
    """
    cache: dict[tuple, str] = {}

    def choose(info: LayerInfo, in_shape: tuple[int, ...], layer: torch.nn.Module | None = None) -> str:
        forms = list(form_costs(info, in_shape))
        if len(forms) == 1 or layer is None:
            return forms[0]
        key = (info.kind, info.c_in, info.c_out, info.kernel, info.stride, info.latent, info.squeeze, info.pool, in_shape)
        if key not in cache:
            medians = _time_forms(layer, info, in_shape, forms, threads, runs)
            cache[key] = min(medians, key=medians.get)
            if on_progress:
                timings = ", ".join(f"{f} {t * 1e3:.3f} ms" for f, t in medians.items())
                on_progress(f"  tuned {info.summary()} at {in_shape[2]}×{in_shape[3]}: {timings} -> {cache[key]}")
        return cache[key]

    choose.wants_layer = True  # type: ignore[attr-defined]
    return choose
