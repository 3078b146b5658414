"""The original network evaluated in float64, and the allowance for its own float32 error.

A deep network's float32 evaluation can differ from its float64 one by more than a fixed bound
allows (issue 18: a random-weight DyConv ResNet-18 at 224 was off by 7.3e-5 of max|logit| on one
CPU, and ONNX Runtime by 1.5e-4 from the float32 original, against a fixed 1e-4). The export was
right; the gate was wrong. So the default gates (the export self-check, parity's default tolerance)
compare a file against the original evaluated in float64 and allow the original's own float32
error on the same inputs, ``noise = max|r32 − r64| / max|r64|``
(:func:`dcd_deploy.lowering.relative_error`), ten times over::

    allowed(base, noise) = max(base, NOISE_FACTOR · noise)

:func:`noise_allowance` is that bound, for the library and for the tests that check exported
files against float64 evaluations. The float64 evaluation is a deep copy of the network
(:func:`run_float64`); a network that cannot be copied or run in float64 (a ``forward()`` that makes
float32 tensors, an op without a float64 kernel) raises :class:`Float64Unavailable`, and the gates
fall back to the float32 evaluation and their fixed bound, with the reason as a note.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import raise_if_interrupted, summarize_exception

if TYPE_CHECKING:  # the bound itself needs no torch (parity's tolerance policy imports it)
    from torch import nn

# How many times the original's own float32 error (against float64) a float32 file may be off by.
NOISE_FACTOR = 10.0


def noise_allowance(base: float, noise: float | None) -> float:
    """``max(base, NOISE_FACTOR · noise)``: a bound on a float32 result's relative error against float64
    that allows ``noise``, the original network's own float32 error (``base`` when unknown or not finite)."""
    if noise is None or not math.isfinite(noise):
        return base
    return max(base, NOISE_FACTOR * noise)


class Float64Unavailable(Exception):
    """The original network cannot be evaluated in float64; ``str()`` says why (for a note)."""


def float64_twin(model: nn.Module) -> nn.Module:
    """A float64 deep copy of ``model`` in eval mode; :class:`Float64Unavailable` when it cannot be made."""
    try:
        return copy.deepcopy(model).double().eval()
    except Exception as exc:  # noqa: BLE001 - any failure to copy means: no float64 evaluation
        raise_if_interrupted()
        raise Float64Unavailable(f"it cannot be copied to float64 ({summarize_exception(exc, limit=200)})") from None


def run_float64(model: nn.Module, run: Callable[[nn.Module], Any]) -> Any:
    """``run(float64 copy of model)`` without gradients; :class:`Float64Unavailable` when the copy or the run fails."""
    import torch

    twin = float64_twin(model)
    try:
        with torch.no_grad():
            return run(twin)
    except Exception as exc:  # noqa: BLE001 - the fallback is the float32 evaluation, with this reason
        raise_if_interrupted()
        raise Float64Unavailable(f"it does not run in float64 ({summarize_exception(exc, limit=200)})") from None
