"""DCD classifier head (``DYCls``): a dynamic Linear layer on pooled feature vectors.

The head (eval mode), with ``hs(t) = clip(t + 3, 0, 6) / 3``::

    y   = SE(W_fc x)                   Φ = W_φ y (L×L),  s = hs(W_s y)
    v   = a1 ⊙ (Q x) + b1              (bn1 folded into Q)
    u   = a2 ⊙ (Φ v) + b2 + v = M v + b2,  M = diag(a2)·Φ + I
    out = P u + s ⊙ (W_cls x + b_cls)

Folded as in ``dcd_conv``: the SE gate's /3 goes into W_φ and W_s, the gate's +3 into Gemm
biases, the /3 of s into W_cls and b_cls, diag(a2) into W_φ's rows with I as its bias, and
P·b2 into the output bias. Everything is a Gemm except one (B, L, L)×(B, L, 1) MatMul. Forming
a per-sample C_out×C_in matrix would cost far more than these Gemms, so the head has one form.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerInfo, Mismatch, describe_parts, register_family
from .dcd_conv import _linear, match_attention
from .folding import bn_affine, is_foldable_bn

PARTS = ["cls", "cls_q", "cls_p", "bn1", "bn2", "fc", "fc_phi", "fc_scale", "hs"]


@register_family
class DcdHeadFamily:
    name = "dcd_head"

    def looks_dynamic(self, module: nn.Module) -> bool:
        return hasattr(module, "cls_q") or (hasattr(module, "cls") and hasattr(module, "fc_phi"))

    def match(self, module: nn.Module) -> LayerInfo | Mismatch:
        f = self.name
        missing = [n for n in PARTS if not isinstance(getattr(module, n, None), nn.Module)]
        if missing:
            return Mismatch(f, f"has {describe_parts(module, PARTS)} but no {', '.join(missing)}")
        cls = module.cls
        if not _linear(cls, None, None, bias=True):
            return Mismatch(f, "cls is not a Linear with bias")
        c_in, c_out = cls.in_features, cls.out_features
        if not _linear(module.cls_q, c_in, None):
            return Mismatch(f, f"cls_q is not a bias-free Linear with {c_in} inputs")
        dim = module.cls_q.out_features
        if not _linear(module.cls_p, dim, c_out):
            return Mismatch(f, f"cls_p is not a bias-free Linear({dim}, {c_out})")
        for name in ("bn1", "bn2"):
            if not is_foldable_bn(getattr(module, name), dim, 1):
                return Mismatch(f, f"{name} is not a BatchNorm1d({dim}) with running statistics")
        squeeze, bad = match_attention(module, c_in, dim, c_out, f)
        if bad:
            return bad
        return LayerInfo(f, "DYCls", c_in, c_out, 1, 1, 0, dim, squeeze, None, {})

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None, options: object = None) -> nn.Module:
        if follow_bn is not None:
            raise ValueError("the DCD head is never followed by a foldable BatchNorm")
        return LoweredDcdHead.from_layer(module, info)


class LoweredDcdHead(nn.Module):
    def __init__(self, info: LayerInfo):
        super().__init__()
        self.kind = info.kind
        self.dim, self.c_out = info.latent, info.c_out
        self.fc = nn.Linear(info.c_in, info.squeeze, bias=False)
        self.se = nn.Linear(info.squeeze, info.squeeze)
        self.phi = nn.Linear(info.squeeze, info.latent**2)
        self.scale = nn.Linear(info.squeeze, info.c_out)
        self.cls = nn.Linear(info.c_in, info.c_out)
        self.q = nn.Linear(info.c_in, info.latent)
        self.p = nn.Linear(info.latent, info.c_out)

    @classmethod
    def from_layer(cls, layer: nn.Module, info: LayerInfo) -> LoweredDcdHead:
        new = cls(info)
        L = info.latent
        with torch.no_grad():
            a1, b1 = bn_affine(layer.bn1)
            a2, b2 = bn_affine(layer.bn2)
            new.fc.weight.copy_(layer.fc[0].weight)
            new.se.weight.copy_(layer.fc[1].fc[0].weight)
            new.se.bias.fill_(3.0)
            phi = layer.fc_phi.weight.double().view(L, L, -1) * a2.view(L, 1, 1) / 3.0
            new.phi.weight.copy_(phi.reshape(L * L, -1).float())
            new.phi.bias.copy_(torch.eye(L).flatten())
            new.scale.weight.copy_((layer.fc_scale.weight.double() / 3.0).float())
            new.scale.bias.fill_(3.0)
            new.cls.weight.copy_((layer.cls.weight.double() / 3.0).float())
            new.cls.bias.copy_((layer.cls.bias.double() / 3.0).float())
            new.q.weight.copy_((layer.cls_q.weight.double() * a1.view(-1, 1)).float())
            new.q.bias.copy_(b1.float())
            pw = layer.cls_p.weight.double()
            new.p.weight.copy_(pw.float())
            new.p.bias.copy_((pw @ b2).float())
        for param in new.parameters():
            param.requires_grad_(False)
        return new.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y = y * torch.clamp(self.se(y), 0.0, 6.0)
        m = self.phi(y).view(-1, self.dim, self.dim)
        s = torch.clamp(self.scale(y), 0.0, 6.0)
        v = torch.matmul(m, self.q(x).unsqueeze(2)).squeeze(2)
        return self.p(v) + s * self.cls(x)
