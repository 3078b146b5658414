"""Give randomly initialised networks realistic BatchNorm statistics.

Tests and benchmarks need DCD networks whose BatchNorms carry non-trivial statistics and whose
activations stay finite: a freshly initialised deep ResNet-DCD overflows in eval mode, since
its BatchNorms still hold mean 0 / variance 1. :func:`calibrate_batchnorm` runs one eval-mode
forward pass in which each BatchNorm, just before it runs, takes the mean and variance of the
input it actually receives (so every later layer sees normalised activations, as after
training); then each BatchNorm's affine parameters are perturbed. Arbitrary but consistent, and
cheap (one forward pass).

The dynamic fusion term bn2(Φ·z) of a DCD layer is cubic in the layer's input scale (Φ is
linear in the SE-gated pooled input), so in a random network it amplifies every deviation from
the calibration batch and a deep network's eval output becomes chaotic. Trained networks keep it
a modest correction to the static path; ``dynamic_gain`` scales bn2's affine parameters of every
DCD layer (modules with ``fc_phi`` and ``bn2``) to the same effect.
"""

from __future__ import annotations

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _set_stats(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    x = args[0]
    dims = [d for d in range(x.dim()) if d != 1]
    bn.running_mean.copy_(x.mean(dims))
    bn.running_var.copy_(x.var(dims, unbiased=False) + 1e-3)


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, input_size: int = 64, batch_size: int = 8, seed: int = 0, dynamic_gain: float = 0.2
) -> nn.Module:
    """Set every BatchNorm's running statistics from one random batch; returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    handles = [m.register_forward_pre_hook(_set_stats) for m in model.modules() if isinstance(m, _BN)]
    try:
        model(torch.randn(batch_size, 3, input_size, input_size, generator=gen))
    finally:
        for h in handles:
            h.remove()
    for m in model.modules():
        if isinstance(m, _BN) and m.weight is not None:
            n = m.num_features
            m.weight.mul_(0.75 + 0.5 * torch.rand(n, generator=gen))
            m.bias.add_(0.1 * torch.randn(n, generator=gen))
    for m in model.modules():
        bn2 = getattr(m, "bn2", None)
        if hasattr(m, "fc_phi") and isinstance(bn2, _BN) and bn2.weight is not None:
            bn2.weight.mul_(dynamic_gain)
            bn2.bias.mul_(dynamic_gain)
    return model
