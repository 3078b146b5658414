"""BatchNorm folding algebra shared by the layer families.

An eval-mode BatchNorm is an affine map per channel:

    bn(t) = a ⊙ t + b,   a = γ / √(σ² + ε),   b = β − a ⊙ μ

so a linear map followed by a BatchNorm is the linear map with its output rows scaled by a and
bias b (``W' = diag(a)·W``, ``c' = a ⊙ c + b``). All folding is done in float64 and rounded to
float32 once.
"""

from __future__ import annotations

import torch
from torch import nn


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) in float64 such that bn(t) = a·t + b per channel (eval mode)."""
    mean = bn.running_mean.double()
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - a * mean


def identity_affine(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)


def is_foldable_bn(module: nn.Module, channels: int, dims: int = 2) -> bool:
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return (
        isinstance(module, cls)
        and module.num_features == channels
        and module.track_running_stats
        and module.running_mean is not None
    )

