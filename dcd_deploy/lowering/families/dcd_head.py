"""DCD classifier head (``DYCls``): a dynamic Linear layer on pooled feature vectors.

The head (eval mode), with ``hs(t) = clip(t + 3, 0, 6) / 3``::

    y   = SE(W_fc x)                   Φ = W_φ y (L×L),  s = hs(W_s y)
    v   = a1 ⊙ (Q x) + b1              (bn1 folded into Q)
    u   = a2 ⊙ (Φ v) + b2 + v = M v + b2,  M = diag(a2)·Φ + I
    out = P u + s ⊙ (W_cls x + b_cls)

The attention branch is folded as ``lowering/attention.py`` describes; the /3 of s goes into
W_cls and b_cls, and P·b2 into the output bias. Everything is a Gemm except one (B, L, L)×(B, L, 1)
MatMul. Forming a per-sample C_out×C_in matrix would cost far more than these Gemms, so the head
has one form, ``gemm``. Nothing foldable follows a classifier; its static part is ``cls``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ..attention import LoweredAttention, is_linear, match_attention
from ..family import DcdLayerInfo, LayerFamily, LowerOptions, Mismatch, describe_parts, register_family
from ..folding import bn_affine, is_foldable_bn

PARTS = ["cls", "cls_q", "cls_p", "bn1", "bn2", "fc", "fc_phi", "fc_scale", "hs"]


@dataclasses.dataclass(kw_only=True)
class DcdHeadInfo(DcdLayerInfo):
    """A DCD head: a Linear layer (kernel 1, stride 1, padding 0, no attention pool)."""

    spatial: ClassVar[bool] = False


class LoweredDcdHead(LoweredAttention):
    """A DCD head as five Gemms, one small batched MatMul and the elementwise tail."""

    def __init__(self, info: DcdLayerInfo):
        super().__init__(info.c_in, info.squeeze, info.latent, info.c_out)
        self.kind = info.kind
        self.cls = nn.Linear(info.c_in, info.c_out)
        self.q = nn.Linear(info.c_in, info.latent)
        self.p = nn.Linear(info.latent, info.c_out)

    @classmethod
    def from_layer(cls, layer: nn.Module, info: DcdLayerInfo) -> LoweredDcdHead:
        new = cls(info)
        with torch.no_grad():
            a1, b1 = bn_affine(layer.bn1)
            a2, b2 = bn_affine(layer.bn2)
            new.fold_attention(layer, a2)
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
        m, s = self.attend(x)
        v = torch.matmul(m, self.q(x).unsqueeze(2)).squeeze(2)
        return self.p(v) + s * self.cls(x)


@register_family
class DcdHeadFamily(LayerFamily):
    name = "dcd_head"
    paper = "dcd"
    title = "DCD"
    lowered_types = (LoweredDcdHead,)

    def looks_dynamic(self, module: nn.Module) -> bool:
        return hasattr(module, "cls_q") or (hasattr(module, "cls") and hasattr(module, "fc_phi"))

    def match(self, module: nn.Module) -> DcdHeadInfo | Mismatch:
        f = self.name
        missing = [n for n in PARTS if not isinstance(getattr(module, n, None), nn.Module)]
        if missing:
            return Mismatch(f, f"has {describe_parts(module, PARTS)} but no {', '.join(missing)}")
        cls = module.cls
        if not is_linear(cls, None, None, bias=True):
            return Mismatch(f, "cls is not a Linear with bias")
        c_in, c_out = cls.in_features, cls.out_features
        if not is_linear(module.cls_q, c_in, None):
            return Mismatch(f, f"cls_q is not a bias-free Linear with {c_in} inputs")
        dim = module.cls_q.out_features
        if not is_linear(module.cls_p, dim, c_out):
            return Mismatch(f, f"cls_p is not a bias-free Linear({dim}, {c_out})")
        for name in ("bn1", "bn2"):
            if not is_foldable_bn(getattr(module, name), dim, 1):
                return Mismatch(f, f"{name} is not a BatchNorm1d({dim}) with running statistics")
        squeeze = match_attention(module, c_in, dim, c_out, f)
        if isinstance(squeeze, Mismatch):  # a Mismatch is falsy: test its type
            return squeeze
        return DcdHeadInfo(family=f, kind="DYCls", c_in=c_in, c_out=c_out, kernel=1, stride=1, padding=0, latent=dim,
                           squeeze=squeeze, pool=None, names={})

    def forms(self, info: DcdLayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        return ["gemm"]

    def lower(self, module: nn.Module, info: DcdLayerInfo, follow_bn: nn.Module | None,
              options: LowerOptions) -> LoweredDcdHead:
        if follow_bn is not None:
            raise ValueError("the DCD head folds no following BatchNorm")
        return LoweredDcdHead.from_layer(module, info)

    def static_part(self, module: nn.Module, info: DcdLayerInfo) -> nn.Module:
        return module.cls
