"""The attention branch shared by the DCD families: matching it, and its lowered (folded) form.

In every DCD layer, with ``hs(t) = clip(t + 3, 0, 6) / 3``::

    y = SE(fc0 · v)          SE(y) = y ⊙ hs(W_se y)
    Φ = W_φ y  (L×L)         s = hs(W_s y)  (C_out)

where ``v`` is the pooled map (convolutions) or the feature vector (the head). Lowered, the SE
gate's +3 becomes a Gemm bias and its /3 moves into W_φ and W_s (y only feeds those two); the
layer's bn2 scale ``a2`` scales W_φ's rows and the identity of ``u = M z``, ``M = diag(a2)·Φ + I``,
becomes W_φ's bias, so :meth:`LoweredAttention.attend` returns M and s directly.
"""

from __future__ import annotations

import torch
from torch import nn

from .family import Mismatch
from .shapes import keep_batch_reshape


def is_linear(m: object, in_f: int | None, out_f: int | None, bias: bool = False) -> bool:
    """``m`` is an ``nn.Linear`` of these sizes (None: any) with or without a bias."""
    return (
        isinstance(m, nn.Linear)
        and (in_f is None or m.in_features == in_f)
        and (out_f is None or m.out_features == out_f)
        and ((m.bias is not None) == bias)
    )


def match_attention(module: nn.Module, in_features: int, dim: int, c_out: int, family: str) -> int | Mismatch:
    """Check the attention branch; return its squeeze width, or a mismatch.

    ``fc = Sequential(Linear(in, sq, no bias), SE(sq))`` with ``SE.fc = Sequential(Linear, hs)``,
    then ``fc_phi = Linear(sq, L², no bias)`` and ``fc_scale = Linear(sq, C_out, no bias)``.
    """
    fc = module.fc
    if not isinstance(fc, nn.Sequential) or len(fc) != 2:
        return Mismatch(family, "fc is not Sequential(Linear, SEModule_small)")
    if not is_linear(fc[0], in_features, None):
        return Mismatch(
            family,
            f"fc.0 is not a bias-free Linear with {in_features} inputs "
            f"(found {fc[0].__class__.__name__}{tuple(fc[0].weight.shape) if hasattr(fc[0], 'weight') else ''})",
        )
    squeeze = fc[0].out_features
    inner = getattr(fc[1], "fc", None)
    if not isinstance(inner, nn.Sequential) or len(inner) != 2 or not is_linear(inner[0], squeeze, squeeze):
        return Mismatch(family, "fc.1 is not SEModule_small (fc = Sequential(Linear(sq, sq, no bias), Hsigmoid))")
    if not is_linear(module.fc_phi, squeeze, dim * dim):
        return Mismatch(family, f"fc_phi is not a bias-free Linear({squeeze}, {dim * dim}) (L={dim})")
    if not is_linear(module.fc_scale, squeeze, c_out):
        return Mismatch(family, f"fc_scale is not a bias-free Linear({squeeze}, {c_out})")
    return squeeze


class LoweredAttention(nn.Module):
    """Base of the lowered DCD modules: the folded attention MLP as four Gemms (fc, se, phi, scale)."""

    def __init__(self, in_features: int, squeeze: int, latent: int, c_out: int):
        super().__init__()
        self.dim, self.c_out = latent, c_out
        self.fc = nn.Linear(in_features, squeeze, bias=False)
        self.se = nn.Linear(squeeze, squeeze)
        self.phi = nn.Linear(squeeze, latent**2)
        self.scale = nn.Linear(squeeze, c_out)

    @torch.no_grad()
    def fold_attention(self, layer: nn.Module, a2: torch.Tensor) -> None:
        """Copy ``layer``'s attention weights, folding the SE gate's constants and bn2's scale ``a2``."""
        L = self.dim
        self.fc.weight.copy_(layer.fc[0].weight)
        self.se.weight.copy_(layer.fc[1].fc[0].weight)
        self.se.bias.fill_(3.0)
        phi = layer.fc_phi.weight.double().view(L, L, -1) * a2.view(L, 1, 1) / 3.0
        self.phi.weight.copy_(phi.reshape(L * L, -1).float())
        self.phi.bias.copy_(torch.eye(L, dtype=torch.float64).flatten().float())
        self.scale.weight.copy_((layer.fc_scale.weight.double() / 3.0).float())
        self.scale.bias.fill_(3.0)

    def gated_squeeze(self, v: torch.Tensor) -> torch.Tensor:
        """The SE-gated squeeze of the attention input ``v`` (B, in_features), from which Φ and s are read."""
        y = self.fc(v)
        return y * torch.clamp(self.se(y), 0.0, 6.0)

    def attend(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, 3·s)``: M = diag(a2)·Φ + I as (B, L, L) and the channel scale times 3 as (B, C_out)."""
        y = self.gated_squeeze(v)
        return keep_batch_reshape(self.phi(y), (self.dim, self.dim)), torch.clamp(self.scale(y), 0.0, 6.0)
