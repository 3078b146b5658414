"""Measured autotuning of the lowered form (``dcd-deploy export --tune``).

For every DCD convolution that has more than one lowered form, each candidate is exported on
its own (the layer alone, at the input shape it sees in the network) and timed on the target's
ONNX Runtime provider (CPU, or CUDA with the input and output bound on the GPU), candidates
interleaved round-robin with thread spinning off; the form with the lowest median wins. Layers
with one candidate (3×3 or strided) are not timed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import onnx
import torch

from ..lowering.base import LayerInfo
from ..lowering.costmodel import TARGETS, form_costs


def time_forms(layer: torch.nn.Module, info: LayerInfo, in_shape: tuple[int, ...], forms: list[str], threads: int | None,
               runs: int, provider: str = "cpu") -> dict[str, float]:
    """Median seconds of each lowered ``form`` of one DCD convolution at ``in_shape`` on ``provider``."""
    from ..bench.run import OrtRunner
    from ..errors import LoweringError, ProviderUnavailableError
    from ..runtime.timing import measure_interleaved
    from ..lowering.dcd_conv import ConvLowering, LoweredDcdConv
    from .pipeline import simplify
    from ..runtime.session import provider_name

    x = torch.randn(*in_shape, generator=torch.Generator().manual_seed(0))
    runners: dict[str, OrtRunner] = {}
    for form in forms:
        lowered = LoweredDcdConv.from_layer(layer, info, None, ConvLowering(form, (in_shape[2], in_shape[3])))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lowered, (x,), buf, dynamo=False, input_names=["input"], output_names=["out"])
        graph, _ = simplify(onnx.load_from_string(buf.getvalue()))
        runners[form] = OrtRunner(form, graph.SerializeToString(), x.numpy(), provider_name(provider), threads,  # type: ignore[arg-type]
                                  cuda_graph=False)
    measured = measure_interleaved(list(runners.values()), warmup=3 if provider == "cuda" else 1, runs=runs,
                                   threads=threads)
    for runner, m in zip(runners.values(), measured):
        runner.close()
        if m.stats is None:
            error = ProviderUnavailableError if runner.provider_failed else LoweringError
            raise error(f"--tune could not time the {m.label} form of {info.summary()}: {m.skipped}.",
                        "Export without --tune (the cost model chooses) or report the layer.")
    return {m.label: m.stats.p50 for m in measured}


def tuned_form_chooser(threads: int | None = None, runs: int = 15, target: str = "cpu",
                       on_progress: Callable[[str], None] | None = None) -> Callable[[LayerInfo, tuple[int, ...]], str]:
    """A form chooser for :func:`dcd_deploy.lowering.lower_model` that times the candidates on
    ``target``'s provider ('cpu' or 'cuda'; raises ProviderUnavailableError if it is missing).

    The chooser needs the original layer; ``lower_model`` passes it as the ``layer`` keyword.
    Results are cached per (layer sizes, input shape), so repeated blocks are timed once.
    """
    from ..runtime.session import check_available, provider_name

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
    provider = target  # the runtime provider of each target has the target's name
    check_available(provider_name(provider))
    cache: dict[tuple, str] = {}

    def choose(info: LayerInfo, in_shape: tuple[int, ...], layer: torch.nn.Module | None = None) -> str:
        forms = list(form_costs(info, in_shape, target))
        if len(forms) == 1 or layer is None:
            return forms[0]
        key = (info.kind, info.c_in, info.c_out, info.kernel, info.stride, info.latent, info.squeeze, info.pool, in_shape)
        if key not in cache:
            medians = time_forms(layer, info, in_shape, forms, threads, runs, provider)
            cache[key] = min(medians, key=medians.get)
            if on_progress:
                timings = ", ".join(f"{f} {t * 1e3:.3f} ms" for f, t in medians.items())
                on_progress(f"  tuned on {target}: {info.summary()} at {in_shape[2]}×{in_shape[3]}: {timings} -> {cache[key]}")
        return cache[key]

    choose.wants_layer = True  # type: ignore[attr-defined]
    choose.target = target  # type: ignore[attr-defined]
    return choose
