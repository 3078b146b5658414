"""The DCD layers as the reference implementation defines them.

Attribute names, parameter shapes and the forward computation follow the published reference
implementation of Dynamic Convolution Decomposition exactly, so that reference checkpoints load
with ``strict=True`` and produce the same outputs. These modules are the *original* models that
dcd-deploy converts; nothing here is optimised for deployment.

    W(x) = Λ(x)·W0 + P·Φ(x)·Qᵀ
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Hsigmoid(nn.Module):
    """relu6(x + 3) / 3: note the divisor three, so the range is [0, 2]."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0, inplace=self.inplace) / 3.0


class SEModule_small(nn.Module):
    """x · hs(Linear(x))."""

    def __init__(self, channel: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channel, channel, bias=False), Hsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


def _attention(in_features: int, squeeze: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, squeeze, bias=False), SEModule_small(squeeze))


class _DynamicConv(nn.Module):
    """Shared forward of conv_dy, conv_basic_dy and DYModule (which differ in names and sizes)."""

    dim: int
    pool_features: int

    def _q(self) -> nn.Conv2d:
        raise NotImplementedError

    def _p(self) -> nn.Conv2d:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv(x)
        b = x.size(0)
        y = self.avg_pool(x).view(b, self.pool_features)
        y = self.fc(y)
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        scale = self.hs(self.fc_scale(y)).view(b, -1, 1, 1)
        r = scale.expand_as(r) * r
        out = self.bn1(self._q()(x))
        _, _, h, w = out.size()
        out = out.view(b, self.dim, -1)
        out = self.bn2(torch.matmul(phi, out)) + out
        out = out.view(b, -1, h, w)
        return self._p()(out) + r


class conv_dy(_DynamicConv):
    """ResNet bottleneck DCD convolution (1×1 or 3×3), pooled to 1×1."""

    def __init__(self, inplanes: int, planes: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, kernel_size, stride, padding, bias=False)
        self.dim = int(math.sqrt(inplanes))
        squeeze = max(inplanes, self.dim**2) // 16
        self.q = nn.Conv2d(inplanes, self.dim, 1, stride, 0, bias=False)
        self.p = nn.Conv2d(self.dim, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.pool_features = inplanes
        self.fc = _attention(inplanes, squeeze)
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, planes, bias=False)
        self.hs = Hsigmoid()

    def _q(self) -> nn.Conv2d:
        return self.q

    def _p(self) -> nn.Conv2d:
        return self.p


class conv_basic_dy(conv_dy):
    """ResNet basic-block DCD 3×3 convolution (padding 1), pooled to 2×2."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        nn.Module.__init__(self)
        self.conv = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.dim = int(math.sqrt(inplanes * 4))
        squeeze = max(max(inplanes * 4, self.dim**2) // 16, 4)
        self.q = nn.Conv2d(inplanes, self.dim, 1, stride, 0, bias=False)
        self.p = nn.Conv2d(self.dim, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)
        self.avg_pool = nn.AdaptiveAvgPool2d(2)
        self.pool_features = inplanes * 4
        self.fc = _attention(inplanes * 4, squeeze)
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, planes, bias=False)
        self.hs = Hsigmoid()


def dymodule_latent_dim(inp: int, oup: int) -> int:
    """DYModule's latent size L (the reference's size rule)."""
    mul, reduction = (4, 8) if inp < oup else (1, 2)
    dim = min(inp * mul // reduction, oup // reduction)
    while dim**2 > inp * mul * 2:
        reduction *= 2
        dim = min(inp * mul // reduction, oup // reduction)
    return max(dim, 4)


class DYModule(_DynamicConv):
    """MobileNetV2 DCD 1×1 convolution."""

    def __init__(self, inp: int, oup: int, fc_squeeze: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, 1, 1, 0, bias=False)
        if inp < oup:
            self.mul = 4
            self.avg_pool = nn.AdaptiveAvgPool2d(2)
        else:
            self.mul = 1
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.dim = dymodule_latent_dim(inp, oup)
        squeeze = max(max(inp * self.mul, self.dim**2) // fc_squeeze, 4)
        self.pool_features = inp * self.mul
        self.conv_q = nn.Conv2d(inp, self.dim, 1, 1, 0, bias=False)
        self.fc = _attention(inp * self.mul, squeeze)
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, oup, bias=False)
        self.hs = Hsigmoid()
        self.conv_p = nn.Conv2d(self.dim, oup, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)

    def _q(self) -> nn.Conv2d:
        return self.conv_q

    def _p(self) -> nn.Conv2d:
        return self.conv_p


class DYCls(nn.Module):
    """DCD classifier head: a dynamic Linear layer on pooled feature vectors."""

    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.dim = 32
        self.cls = nn.Linear(inp, oup)
        self.cls_q = nn.Linear(inp, self.dim, bias=False)
        self.cls_p = nn.Linear(self.dim, oup, bias=False)
        mid = 32
        self.fc = _attention(inp, mid)
        self.fc_phi = nn.Linear(mid, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(mid, oup, bias=False)
        self.hs = Hsigmoid()
        self.bn1 = nn.BatchNorm1d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        y = self.fc(x)
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        scale = self.hs(self.fc_scale(y)).view(b, -1)
        r = scale * self.cls(x)
        v = self.bn1(self.cls_q(x)).view(b, self.dim, 1)
        v = self.bn2(torch.matmul(phi, v)).view(b, self.dim) + v.view(b, self.dim)
        return self.cls_p(v) + r
