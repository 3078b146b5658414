"""The ONNX Runtime side of a parity check: run the samples on one provider and compare.

A model with a fixed batch size runs in batches of that size; the last batch is filled by
repeating its last sample, whose outputs are dropped. Each provider's options are the ones
dcd-deploy sets by default (:func:`dcd_deploy.runtime.session.default_provider_options`) with the
user's on top; the precision it computes in, and so its default tolerance, follows from the
options ONNX Runtime reports back.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import InputError, summarize_exception
from ..runtime.inputs import batches
from ..runtime.onnxfile import InputSpec, OnnxFile
from ..runtime.session import create_session, default_provider_options, device_name
from .metrics import compare_output
from .reference import check_outputs
from .results import ProviderResult
from .tolerance import compute_precision, default_tolerance


@dataclasses.dataclass
class ProviderRun:
    """One provider's comparison, with the raw outputs kept for --save-io and --localize."""

    result: ProviderResult
    names: list[str]
    outputs: list[np.ndarray]
    options: dict[str, Any]  # what the user gave for this provider


def run_session(session: Any, spec: InputSpec, data: np.ndarray, batch: int) -> tuple[list[str], list[np.ndarray]]:
    """ONNX Runtime outputs on ``data``; a static batch is filled by repeating the last sample."""
    names = [o.name for o in session.get_outputs()]
    chunks: list[list[np.ndarray]] = []
    for start, stop in batches(len(data), batch):
        x = data[start:stop]
        n = len(x)
        if spec.static_batch and n < spec.static_batch:
            x = np.concatenate([x, np.repeat(x[-1:], spec.static_batch - n, axis=0)])
        try:
            outs = session.run(names, {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)})
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types
            raise InputError(f"ONNX Runtime rejected inputs of shape {tuple(x.shape)}: {summarize_exception(exc)}.",
                             f"Give inputs matching the model's input {spec.describe()}.") from None
        chunks.append([np.asarray(o)[:n] for o in outs])
    return names, [np.concatenate([c[i] for c in chunks]) for i in range(len(names))]


def run_provider(onnx_file: OnnxFile, provider: str, given: dict[str, Any], data: np.ndarray, batch: int,
                 reference: list[np.ndarray], atol: float | None, rtol: float | None,
                 noise: list[float] | None = None) -> ProviderRun:
    """Run ``data`` on ``provider`` (a full name) and compare every output with ``reference``; ``noise``
    (per output, the original's float32 error against float64) raises the default tolerance."""
    spec = onnx_file.spec
    session = create_session(onnx_file.path, provider, provider_options=given, dynamic_shapes=spec.dynamic)
    effective = {k: str(v) for k, v in session.get_provider_options().get(provider, {}).items()}
    requested = {**default_provider_options(provider, spec.dynamic), **given}
    start = time.perf_counter()
    names, outs = run_session(session, spec, data, batch)
    run_s = time.perf_counter() - start
    check_outputs(names, outs, reference)
    precision, why = compute_precision(onnx_file.precision, provider, effective)
    tolerance = default_tolerance(precision, atol, rtol)
    comparisons = [compare_output(n, r, o, default_tolerance(precision, atol, rtol, noise[i] if noise else None))
                   for i, (n, r, o) in enumerate(zip(names, reference, outs))]
    result = ProviderResult(provider, device_name(provider), effective, requested, precision, why, tolerance,
                            comparisons, run_s)
    return ProviderRun(result, names, outs, given)
