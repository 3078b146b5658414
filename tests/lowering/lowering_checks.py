"""Shared by the lowering tests: building calibrated networks and the float64-bounded parity check."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dcd_deploy.lowering import relative_error
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

# The lowering itself, measured in float64 on both sides. Besides this, only the rounding of the
# folded weights to float32 (once each) separates the two networks, an error no larger than the
# original float32 network's own distance to its float64 evaluation, which the bound adds.
LOWERING_RTOL = 1e-5


def build(arch: str, size: int, **options) -> nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(create_model(arch, **options), size)


def lowering_errors(model: nn.Module, lowered: nn.Module, x: torch.Tensor, batch: int) -> tuple[float, float, float, float]:
    """(lowering error in float64, lowered float32 vs original float32, and each float32 model's
    own noise against its float64 evaluation) on the first ``batch`` samples of ``x``.

    The original runs once on the whole batch (eval mode: samples are independent); the lowered
    model runs at ``batch``, so batch-size-dependent bugs show.
    """
    with torch.no_grad():
        ref = model(x)[:batch]
        ref64 = copy.deepcopy(model).double()(x.double())[:batch]
        out = lowered(x[:batch])
        out64 = copy.deepcopy(lowered).double()(x[:batch].double())
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    return (relative_error(out64, ref64), relative_error(out, ref), relative_error(ref, ref64),
            relative_error(out, out64))


def assert_lowering_parity(model: nn.Module, lowered: nn.Module, x: torch.Tensor, batches: tuple[int, ...] = (1, 3)) -> None:
    """The lowering is exact in float64, and the float32 models differ by no more than their own noises.

    Both bounds come from float64 evaluations, never from one float32 result's noise: the
    lowered and original float64 networks agree within :data:`LOWERING_RTOL` plus the original's
    float32 noise (the folded weights are float32), and the float32 outputs within that plus the
    sum of the two float32 models' distances to their float64 runs.
    """
    for b in batches:
        err64, err32, noise_ref, noise_low = lowering_errors(model, lowered, x, b)
        allowed64 = LOWERING_RTOL + noise_ref
        assert err64 <= allowed64, (f"batch {b}: float64 lowering error {err64:.3e} exceeds {LOWERING_RTOL:.0e} + "
                                    f"float32 noise {noise_ref:.3e}")
        allowed = allowed64 + noise_ref + noise_low
        assert err32 <= allowed, (f"batch {b}: float32 error {err32:.3e} exceeds {LOWERING_RTOL:.0e} + float32 noises "
                                  f"{noise_ref:.3e} (original) + {noise_low:.3e} (lowered)")
