"""Measured autotuning of the lowered form (``dcd-deploy export --tune``).

For every dynamic layer whose family offers more than one lowered form (``family.forms``),
each candidate is lowered by its family and exported on its own (the layer alone, at the input
shape it sees in the network) and timed on the target's ONNX Runtime provider (CPU, or CUDA with
the input and output bound on the GPU), candidates interleaved round-robin with thread spinning
off; the form with the lowest median wins. Layers with one candidate (a DCD convolution that is
3×3 or strided) are not timed.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable

import onnx
import torch

from ..lowering.costmodel import check_target, target_forms
from ..lowering.family import FAMILIES, LayerFamily, LayerInfo, LowerOptions


def time_forms(layer: torch.nn.Module, info: LayerInfo, in_shape: tuple[int, ...], forms: list[str], threads: int | None,
               runs: int, provider: str = "cpu", static_batch: int | None = None) -> dict[str, float]:
    """Median seconds of each lowered ``form`` of one dynamic layer at ``in_shape`` on ``provider``
    (``static_batch``: the fixed batch of a batch-specific export, for its static-shape forms)."""
    from ..errors import LoweringError, ProviderUnavailableError
    from ..runtime.runners import OrtRunner
    from ..runtime.session import provider_name
    from ..runtime.timing import measure_interleaved
    from .folded import expand_folded_convs
    from .loops import expand_per_sample_convs
    from .options import DEFAULT_OPSET
    from .stages import simplify

    family = FAMILIES[info.family]
    x = torch.randn(*in_shape, generator=torch.Generator().manual_seed(0))
    runners: dict[str, OrtRunner] = {}
    in_hw = (in_shape[2], in_shape[3]) if len(in_shape) == 4 else None
    extra = family.extra_inputs(info)  # e.g. CondConv's routing, computed from the input
    for form in forms:
        lowered = family.lower(layer, info, None, LowerOptions(form, in_hw, static_batch))
        if extra is not None:
            lowered = _WithExtraInputs(lowered, extra)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lowered, (x,), buf, dynamo=False, opset_version=DEFAULT_OPSET, input_names=["input"],
                              output_names=["out"])
        # the loop form's per-sample convolutions become ONNX Loops, as in the exported file
        graph, _ = simplify(expand_per_sample_convs(expand_folded_convs(onnx.load_from_string(buf.getvalue()))))
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


class _WithExtraInputs(torch.nn.Module):
    """``lowered(x, *extra(x))``: a layer that takes more than its input, timed alone."""

    def __init__(self, lowered: torch.nn.Module, extra: torch.nn.Module):
        super().__init__()
        self.lowered, self.extra = lowered, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowered(x, *self.extra(x))


class TunedFormChooser:
    """A :class:`~dcd_deploy.lowering.family.FormChooser` that times each layer's candidate forms on
    ``target``'s provider ('cpu' or 'cuda'; raises ProviderUnavailableError if it is missing).

    Results are cached per (family, layer sizes, input shape), so repeated blocks are timed once.
    """

    def __init__(self, threads: int | None = None, runs: int = 15, target: str = "cpu",
                 on_progress: Callable[[str], None] | None = None):
        from ..runtime.session import check_available, provider_name

        self.provider = check_target(target)  # the runtime provider of each target has the target's name
        check_available(provider_name(self.provider))
        self.threads, self.runs, self.on_progress = threads, runs, on_progress
        self.cache: dict[tuple, str] = {}

    def __call__(self, family: LayerFamily, info: LayerInfo, in_shape: tuple[int, ...], layer: torch.nn.Module,
                 static_batch: int | None = None) -> str:
        forms = target_forms(family, info, in_shape, self.provider, static_batch)  # no Loop on cuda
        if len(forms) == 1:
            return forms[0]
        key = (family.name, json.dumps(info.to_dict(), sort_keys=True), in_shape, static_batch)
        if key not in self.cache:
            medians = time_forms(layer, info, in_shape, forms, self.threads, self.runs, self.provider, static_batch)
            self.cache[key] = min(medians, key=medians.get)
            if self.on_progress:
                timings = ", ".join(f"{f} {t * 1e3:.3f} ms" for f, t in medians.items())
                self.on_progress(f"  tuned on {self.provider}: {info.summary()} at {'×'.join(map(str, in_shape[2:]))}: "
                                 f"{timings} -> {self.cache[key]}")
        return self.cache[key]


def tuned_form_chooser(threads: int | None = None, runs: int = 15, target: str = "cpu",
                       on_progress: Callable[[str], None] | None = None) -> TunedFormChooser:
    """The :class:`TunedFormChooser` for ``target`` (fails fast when its provider is missing)."""
    return TunedFormChooser(threads, runs, target, on_progress)
