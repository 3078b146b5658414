"""A user's own network built from DCD layers copied into their project under other class names.

Used by the tests of ``--model package.module:factory``: recognition is structural, so these
layers must be found and loaded although no class here comes from ``dcd_deploy``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcd_deploy.zoo.layers import conv_basic_dy


class HardSig(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 3.0


class Gate(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c, bias=False), HardSig())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class MyDynamicConv(nn.Module):
    """The reference ``conv_dy`` (ResNet bottleneck DCD conv), renamed."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.dim = int(math.sqrt(cin))
        squeeze = max(cin, self.dim**2) // 16
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.q = nn.Conv2d(cin, self.dim, 1, stride, 0, bias=False)
        self.p = nn.Conv2d(self.dim, cout, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(cin, squeeze, bias=False), Gate(squeeze))
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, cout, bias=False)
        self.hs = HardSig()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        r = self.conv(x)
        y = self.fc(self.avg_pool(x).flatten(1))
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        r = self.hs(self.fc_scale(y)).view(b, -1, 1, 1) * r
        z = self.bn1(self.q(x))
        h, w = z.shape[2:]
        z = z.view(b, self.dim, -1)
        z = self.bn2(torch.matmul(phi, z)) + z
        return self.p(z.view(b, -1, h, w)) + r


class MyDynamicHead(nn.Module):
    """The reference ``DYCls`` (DCD classifier head), renamed."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dim = 32
        self.cls = nn.Linear(cin, cout)
        self.cls_q = nn.Linear(cin, self.dim, bias=False)
        self.cls_p = nn.Linear(self.dim, cout, bias=False)
        self.fc = nn.Sequential(nn.Linear(cin, 32, bias=False), Gate(32))
        self.fc_phi = nn.Linear(32, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(32, cout, bias=False)
        self.hs = HardSig()
        self.bn1 = nn.BatchNorm1d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        y = self.fc(x)
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        r = self.hs(self.fc_scale(y)) * self.cls(x)
        v = self.bn1(self.cls_q(x)).view(b, self.dim, 1)
        v = self.bn2(torch.matmul(phi, v)).view(b, self.dim) + v.view(b, self.dim)
        return self.cls_p(v) + r


class HalfDynamic(nn.Module):
    """Looks dynamic (it has ``fc_phi``) but is no DCD layer: no q/p projections, no bn2."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=False)
        self.fc_phi = nn.Linear(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc_phi(x.mean((2, 3))))
        return self.conv(x) * gate[:, :, None, None]


class TinyDcdNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, half_dynamic: bool = False, fixed_pool: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.block = MyDynamicConv(width, 2 * width, 3, 2)
        self.bn = nn.BatchNorm2d(2 * width)
        self.extra = HalfDynamic(2 * width) if half_dynamic else nn.Identity()
        # fixed_pool: like the reference ResNet's AvgPool2d(7), only right for one input size (28×28 here).
        self.pool = nn.AvgPool2d(7) if fixed_pool else nn.AdaptiveAvgPool2d(1)
        self.head = MyDynamicHead(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.extra(torch.relu(self.bn(self.block(self.stem(x)))))
        return self.head(self.pool(x).flatten(1))


def factory(num_classes: int = 10, width: int = 16, half_dynamic: bool = False, fixed_pool: bool = False) -> nn.Module:
    return TinyDcdNet(num_classes, width, half_dynamic, fixed_pool)


def failing_factory(**_kwargs) -> nn.Module:
    raise ValueError("this factory always fails")


def not_a_module() -> str:
    return "not a network"

class NoBn2(conv_basic_dy):
    """A user's variant: the dynamic fusion without its BatchNorm1d (not the published layer)."""

    def __init__(self, inplanes: int, planes: int):
        super().__init__(inplanes, planes, 1)
        del self.bn2

    def forward(self, x):
        b = x.size(0)
        y = self.fc(self.avg_pool(x).view(b, -1))
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        r = self.hs(self.fc_scale(y)).view(b, -1, 1, 1) * self.conv(x)
        z = self.bn1(self.q(x))
        h, w = z.shape[2:]
        z = torch.matmul(phi, z.view(b, self.dim, -1)) + z.view(b, self.dim, -1)
        return self.p(z.view(b, -1, h, w)) + r
