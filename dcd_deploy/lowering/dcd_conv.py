"""DCD convolutions (ResNet ``conv_dy`` / ``conv_basic_dy``, MobileNetV2 ``DYModule``).

The layer (eval mode), with ``hs(t) = clip(t + 3, 0, 6) / 3``::

    y   = SE(fc0 · pool(x))               SE(y) = y ⊙ hs(W_se y)
    Φ   = W_φ y   (L×L per sample)        s = hs(W_s y)   (C_out per sample)
    z   = a1 ⊙ Q x + b1                   (bn1 folded into Q)
    u   = a2 ⊙ (Φ z) + b2 + z = M z + b2, M = diag(a2)·Φ + I
    out = P u + s ⊙ (W0 ∗ x)

With the BatchNorm (g, h) that follows the layer in its block folded in as well::

    out' = P' M z + s ⊙ (W0' ∗ x) + c,    P' = diag(g)·P,  W0' = diag(g)·W0,  c = g ⊙ P b2 + h

Constants are folded into the weights: hs's +3 becomes a Gemm bias; hs's /3 after the SE gate
moves into W_φ and W_s (y only feeds those two), the /3 of s moves into W0'; diag(a2) scales
W_φ's rows and I becomes W_φ's bias, so ``M`` comes out of one Gemm.

Two lowered forms compute this:

* ``factored``: conv(W0'/3) and conv(Q') read x, one batched MatMul applies M to the L latent
  channels, conv(P') maps back; works for every kernel size and stride.
* ``merged`` (1×1, stride 1): the per-sample kernel K = diag(s)·W0'/3 + P'·M·Q' (C_out×C_in)
  and bias P'·M·b1 + c are formed from small matrices, then one batched MatMul with x. It costs
  C_out·L·(L + C_in) per sample to form K and saves the Q conv, the P conv and the elementwise
  tail: worth it when the feature map is large.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerInfo, Mismatch, describe_parts, register_family
from .folding import bn_affine, identity_affine, is_foldable_bn
from .pooling import ExactAdaptiveAvgPool

PARTS = ["conv", "q|conv_q", "p|conv_p", "bn1", "bn2", "avg_pool", "fc", "fc_phi", "fc_scale", "hs"]


def _linear(m: object, in_f: int | None, out_f: int | None, bias: bool = False) -> bool:
    return (
        isinstance(m, nn.Linear)
        and (in_f is None or m.in_features == in_f)
        and (out_f is None or m.out_features == out_f)
        and ((m.bias is not None) == bias)
    )


def _pool_size(pool: nn.Module) -> int | None:
    if not isinstance(pool, nn.AdaptiveAvgPool2d):
        return None
    size = pool.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return size[0] if size[0] == size[1] and size[0] in (1, 2) else None


def match_attention(module: nn.Module, in_features: int, dim: int, c_out: int, family: str) -> tuple[int, Mismatch | None]:
    """Check the attention branch shared by every family.

    ``fc = Sequential(Linear(in, sq, no bias), SE(sq))`` with ``SE.fc = Sequential(Linear, hs)``,
    then ``fc_phi = Linear(sq, L², no bias)`` and ``fc_scale = Linear(sq, C_out, no bias)``.
    """
    fc = module.fc
    if not isinstance(fc, nn.Sequential) or len(fc) != 2:
        return 0, Mismatch(family, "fc is not Sequential(Linear, SEModule_small)")
    if not _linear(fc[0], in_features, None):
        return 0, Mismatch(
            family,
            f"fc.0 is not a bias-free Linear with {in_features} inputs "
            f"(found {fc[0].__class__.__name__}{tuple(fc[0].weight.shape) if hasattr(fc[0], 'weight') else ''})",
        )
    squeeze = fc[0].out_features
    se = fc[1]
    inner = getattr(se, "fc", None)
    if not isinstance(inner, nn.Sequential) or len(inner) != 2 or not _linear(inner[0], squeeze, squeeze):
        return 0, Mismatch(family, "fc.1 is not SEModule_small (fc = Sequential(Linear(sq, sq, no bias), Hsigmoid))")
    if not _linear(module.fc_phi, squeeze, dim * dim):
        return 0, Mismatch(family, f"fc_phi is not a bias-free Linear({squeeze}, {dim * dim}) (L={dim})")
    if not _linear(module.fc_scale, squeeze, c_out):
        return 0, Mismatch(family, f"fc_scale is not a bias-free Linear({squeeze}, {c_out})")
    return squeeze, None


@register_family
class DcdConvFamily:
    name = "dcd_conv"

    def looks_dynamic(self, module: nn.Module) -> bool:
        has = lambda n: hasattr(module, n)
        return (has("fc_phi") or has("fc_scale") or (has("q") and has("p")) or (has("conv_q") and has("conv_p"))) and not (
            has("cls") or has("cls_q")
        )

    def match(self, module: nn.Module) -> LayerInfo | Mismatch:
        f = self.name
        q_name = "q" if hasattr(module, "q") else "conv_q"
        p_name = "p" if hasattr(module, "p") else "conv_p"
        missing = [
            part for part in PARTS if not any(isinstance(getattr(module, n, None), nn.Module) for n in part.split("|"))
        ]
        if missing:
            names = [n.split("|")[0] for n in PARTS]
            return Mismatch(f, f"has {describe_parts(module, names)} but no {', '.join(m.replace('|', '/') for m in missing)}")
        conv, q, p = module.conv, getattr(module, q_name), getattr(module, p_name)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.bias is not None or conv.dilation != (1, 1):
            return Mismatch(f, "conv is not a bias-free, ungrouped, undilated Conv2d")
        k, s, pad = conv.kernel_size, conv.stride, conv.padding
        if k[0] != k[1] or s[0] != s[1] or pad[0] != pad[1] or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return Mismatch(f, f"conv has a non-square kernel/stride/padding ({k}, {s}, {pad})")
        k, s, pad = k[0], s[0], pad[0]
        if k % 2 == 0 or pad != k // 2:
            return Mismatch(f, f"conv kernel {k} with padding {pad} has no centre tap aligned with the 1×1 q (needs odd k, padding k//2)")
        c_in, c_out = conv.in_channels, conv.out_channels
        if not isinstance(q, nn.Conv2d) or q.kernel_size != (1, 1) or q.stride != (s, s) or q.padding != (0, 0) or q.groups != 1 or q.bias is not None:
            return Mismatch(f, f"{q_name} is not a bias-free 1×1 Conv2d with stride {s} and padding 0")
        if q.in_channels != c_in:
            return Mismatch(f, f"{q_name} takes {q.in_channels} channels but conv takes {c_in}")
        dim = q.out_channels
        if not isinstance(p, nn.Conv2d) or p.kernel_size != (1, 1) or p.stride != (1, 1) or p.groups != 1 or p.bias is not None:
            return Mismatch(f, f"{p_name} is not a bias-free 1×1 Conv2d with stride 1")
        if (p.in_channels, p.out_channels) != (dim, c_out):
            return Mismatch(f, f"{p_name} maps {p.in_channels}→{p.out_channels} but L={dim} and C_out={c_out}")
        if not is_foldable_bn(module.bn1, dim, 2):
            return Mismatch(f, f"bn1 is not a BatchNorm2d({dim}) with running statistics")
        if not is_foldable_bn(module.bn2, dim, 1):
            return Mismatch(f, f"bn2 is not a BatchNorm1d({dim}) with running statistics")
        pool = _pool_size(module.avg_pool)
        if pool is None:
            return Mismatch(f, f"avg_pool is {module.avg_pool!r}, expected AdaptiveAvgPool2d(1) or (2)")
        squeeze, bad = match_attention(module, c_in * pool * pool, dim, c_out, f)
        if bad:
            return bad
        if q_name == "conv_q":
            kind = "DYModule"
        else:
            kind = "conv_basic_dy" if pool == 2 else "conv_dy"
        return LayerInfo(f, kind, c_in, c_out, k, s, pad, dim, squeeze, pool, {"q": q_name, "p": p_name})

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None, options: ConvLowering) -> nn.Module:
        return LoweredDcdConv.from_layer(module, info, follow_bn, options)


class ConvLowering:
    """Per-layer choices: the form and the input size the layer sees (None: dynamic)."""

    def __init__(self, form: str = "factored", in_hw: tuple[int, int] | None = None):
        if form not in ("factored", "merged"):
            raise ValueError(f"unknown form {form!r}")
        self.form = form
        self.in_hw = in_hw


class LoweredDcdConv(nn.Module):
    """A DCD convolution as static convolutions, small Gemms and one batched MatMul."""

    def __init__(self, info: LayerInfo, form: str, in_hw: tuple[int, int] | None):
        super().__init__()
        if form == "merged" and (info.kernel != 1 or info.stride != 1):
            raise ValueError("the merged form needs a 1×1 stride-1 layer")
        self.form = form
        self.kind = info.kind
        self.c_in, self.c_out, self.dim = info.c_in, info.c_out, info.latent
        self.in_hw = in_hw
        k, s, pad = info.kernel, info.stride, info.padding
        self.out_hw = None if in_hw is None else tuple((n + 2 * pad - k) // s + 1 for n in in_hw)
        self.pool = ExactAdaptiveAvgPool(info.pool, in_hw)
        self.fc = nn.Linear(info.c_in * info.pool**2, info.squeeze, bias=False)
        self.se = nn.Linear(info.squeeze, info.squeeze)
        self.phi = nn.Linear(info.squeeze, info.latent**2)
        self.scale = nn.Linear(info.squeeze, info.c_out)
        if form == "factored":
            self.conv = nn.Conv2d(info.c_in, info.c_out, k, s, pad, bias=False)
            self.q = nn.Conv2d(info.c_in, info.latent, 1, s, 0)
            self.p = nn.Conv2d(info.latent, info.c_out, 1)
        else:
            self.register_buffer("w0", torch.zeros(info.c_out, info.c_in))
            self.register_buffer("q_w", torch.zeros(info.latent, info.c_in))
            self.register_buffer("q_b", torch.zeros(info.latent, 1))
            self.register_buffer("p_w", torch.zeros(info.c_out, info.latent))
            self.register_buffer("p_b", torch.zeros(info.c_out, 1))

    @classmethod
    def from_layer(cls, layer: nn.Module, info: LayerInfo, follow_bn: nn.Module | None, options: ConvLowering) -> LoweredDcdConv:
        new = cls(info, options.form, options.in_hw)
        L = info.latent
        with torch.no_grad():
            a1, b1 = bn_affine(layer.bn1)
            a2, b2 = bn_affine(layer.bn2)
            g, h = bn_affine(follow_bn) if follow_bn is not None else identity_affine(info.c_out)
            w0 = layer.conv.weight.double() * g.view(-1, 1, 1, 1) / 3.0
            qw = getattr(layer, info.names["q"]).weight.double()[:, :, 0, 0] * a1.view(-1, 1)
            pw = getattr(layer, info.names["p"]).weight.double()[:, :, 0, 0]
            p_fold = pw * g.view(-1, 1)
            c = g * (pw @ b2) + h
            new.fc.weight.copy_(layer.fc[0].weight)
            new.se.weight.copy_(layer.fc[1].fc[0].weight)
            new.se.bias.fill_(3.0)
            phi = layer.fc_phi.weight.double().view(L, L, -1) * a2.view(L, 1, 1) / 3.0
            new.phi.weight.copy_(phi.reshape(L * L, -1).float())
            new.phi.bias.copy_(torch.eye(L, dtype=torch.float64).flatten().float())
            new.scale.weight.copy_((layer.fc_scale.weight.double() / 3.0).float())
            new.scale.bias.fill_(3.0)
            if options.form == "factored":
                new.conv.weight.copy_(w0.float())
                new.q.weight.copy_(qw.view(L, -1, 1, 1).float())
                new.q.bias.copy_(b1.float())
                new.p.weight.copy_(p_fold.view(info.c_out, L, 1, 1).float())
                new.p.bias.copy_(c.float())
            else:
                new.w0.copy_(w0[:, :, 0, 0].float())
                new.q_w.copy_(qw.float())
                new.q_b.copy_(b1.view(L, 1).float())
                new.p_w.copy_(p_fold.float())
                new.p_b.copy_(c.view(-1, 1).float())
        for param in new.parameters():
            param.requires_grad_(False)
        return new.eval()

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch's SE-gated squeeze of pool(x), from which Φ and s are read."""
        y = self.fc(self.pool(x))
        return y * torch.clamp(self.se(y), 0.0, 6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = self.dim
        y = self.squeeze(x)
        m = self.phi(y).view(-1, L, L)
        s = torch.clamp(self.scale(y), 0.0, 6.0)
        if self.form == "merged":
            # K = diag(s)·W0'/3 + P'·M·Q'   (B, C_out, C_in);   bias = P'·M·b1 + c
            pm = torch.matmul(self.p_w, m)
            kernel = s.unsqueeze(2) * self.w0 + torch.matmul(pm, self.q_w)
            bias = torch.matmul(pm, self.q_b) + self.p_b
            if self.in_hw is not None:
                h, w = self.in_hw
                out = torch.matmul(kernel, x.reshape(-1, self.c_in, h * w)) + bias
                return out.view(-1, self.c_out, h, w)
            out = torch.matmul(kernel, x.flatten(2)) + bias
            return out.view(x.shape[0], self.c_out, x.shape[2], x.shape[3])
        r = self.conv(x)
        z = self.q(x)
        if self.out_hw is not None:
            h, w = self.out_hw
            z = torch.matmul(m, z.reshape(-1, L, h * w)).view(-1, L, h, w)
        else:
            z = torch.matmul(m, z.flatten(2)).view(z.shape)
        return self.p(z) + r * s.view(-1, self.c_out, 1, 1)
