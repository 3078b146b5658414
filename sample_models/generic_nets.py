"""Dynamic convolutions of families dcd-deploy has no structural family for, written from the papers.

Each ends in the batch-folded grouped convolution (``F.conv2d(x.reshape(1, N·C, H, W), w,
groups=N·g)``) that the ``generic`` family lowers; class and attribute names are this file's own.

* :class:`KWConv2d` (KernelWarehouse, Li & Yao, ICML 2024): a layer's kernel is divided into
  ``m`` cells of one shape; a :class:`Warehouse` of ``n`` cells of that shape is shared by the
  layers of a stage (with the same kernel size); each of the layer's cells is a mix of the ``n``
  warehouse cells, ``w_i = Σ_j α_ij e_j``, with ``z = fc2(relu(bn(fc1(gap(x)))))`` and the
  normalised attention ``α_ij = (1 − τ)·z_ij / Σ_p |z_ip| + τ·β_ij`` (``β``: the attentions
  initialisation, one-hot on the cell the layer would own in a plain network; ``τ``, the
  temperature, goes from 1 to 0 early in training). ``kw1x``: the warehouse holds as many cells
  as the stage's layers together (the plain network's parameter count).
* :class:`WeightNetConv` (WeightNet, Ma et al., ECCV 2020): ``x_gap`` (the block's squeezed global
  pool, computed outside the layer) → ``fc1`` (1×1 conv to ``M·C_out``) → sigmoid → ``fc2``, a
  grouped fully-connected layer (1×1 conv, ``G·C_out`` groups) generating ``C_out·C_in·k²``
  kernel values per sample.
* :class:`VariantConv`: an in-house variant (routing from a separate squeeze module, softmax over
  3 experts, the kernel from ``einsum``, conv1d or conv2d, groups, stride, dilation, bias inside
  or after the call, ``view`` or ``reshape``).

Networks (``--model sample_models.generic_nets:FACTORY``): ``kw_resnet18``, ``kw_resnet50``,
``weightnet_resnet18``, ``variant_net``; small widths and depths give the test networks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------- KernelWarehouse


class Warehouse(nn.Module):
    """``n`` kernel cells of one shape (cell_out, cell_in, k, k), shared by the layers of a stage."""

    def __init__(self, cell_out: int, cell_in: int, k: int):
        super().__init__()
        self.shape = (cell_out, cell_in, k, k)
        self.cells = nn.Parameter(torch.empty(0, *self.shape))
        self.owners = 0

    def reserve(self, m: int) -> int:
        """Room for a layer of ``m`` cells (kw1x); returns the index of its first cell."""
        start = self.cells.shape[0]
        fresh = torch.empty(m, *self.shape)
        nn.init.kaiming_normal_(fresh.view(m * self.shape[0], *self.shape[1:]), mode="fan_out", nonlinearity="relu")
        self.cells = nn.Parameter(torch.cat([self.cells.data, fresh]))
        self.owners += 1
        return start


class KWConv2d(nn.Module):
    """A KernelWarehouse convolution: its ``m`` cells mixed from a shared warehouse per sample."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int, warehouse: Warehouse,
                 reduction: float = 0.0625, min_hidden: int = 16):
        super().__init__()
        cell_out, cell_in, k, _ = warehouse.shape
        assert k == kernel_size and out_planes % cell_out == 0 and in_planes % cell_in == 0
        self.in_planes, self.out_planes, self.kernel_size, self.stride = in_planes, out_planes, kernel_size, stride
        self.padding = kernel_size // 2
        self.grid = (out_planes // cell_out, in_planes // cell_in)
        self.m = self.grid[0] * self.grid[1]
        self.store = [warehouse]  # a list: the warehouse is the stage's, not this layer's submodule
        self.offset = warehouse.reserve(self.m)
        hidden = max(int(in_planes * reduction), min_hidden)
        self.fc1 = nn.Linear(in_planes, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 1)  # resized by finish() once the warehouse is complete
        self.temperature = 1.0

    def finish(self) -> None:
        n = self.store[0].cells.shape[0]
        self.fc2 = nn.Linear(self.fc2.in_features, self.m * n)
        nn.init.normal_(self.fc2.weight, std=0.1)
        nn.init.zeros_(self.fc2.bias)
        init = torch.zeros(self.m, n)
        init[torch.arange(self.m), self.offset + torch.arange(self.m)] = 1.0
        self.register_buffer("att_init", init)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.bn(self.fc1(x.mean(dim=(2, 3))))))
        z = z.view(x.shape[0], self.m, -1)
        z = z / (z.abs().sum(dim=-1, keepdim=True) + 1e-3)
        return (1.0 - self.temperature) * z + self.temperature * self.att_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cells = self.store[0].cells
        mixed = torch.matmul(self.attention(x), cells.view(cells.shape[0], -1))  # (b, m, cell elements)
        co, ci, k, _ = cells.shape[1:]
        weight = mixed.view(b, self.grid[0], self.grid[1], co, ci, k, k).permute(0, 1, 3, 2, 4, 5, 6)
        weight = weight.reshape(b * self.out_planes, self.in_planes, k, k)
        out = F.conv2d(x.reshape(1, -1, h, w), weight, None, self.stride, self.padding, 1, b)
        return out.view(b, self.out_planes, out.shape[-2], out.shape[-1])


class KWBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, store: WarehouseStore, stage: int):
        super().__init__()
        self.conv1 = store.conv(stage, inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = store.conv(stage, planes, planes, 3, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class KWBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, store: WarehouseStore, stage: int):
        super().__init__()
        self.conv1 = store.conv(stage, inplanes, planes, 1, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = store.conv(stage, planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = store.conv(stage, planes, planes * 4, 1, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class WarehouseStore(nn.Module):
    """The warehouses of a network, one per (stage, kernel size); cells are half a stage width square."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.widths = widths
        self.houses = nn.ModuleDict()
        self.layers: list[KWConv2d] = []

    def conv(self, stage: int, cin: int, cout: int, k: int, stride: int) -> KWConv2d:
        key = f"s{stage}_k{k}"
        if key not in self.houses:
            cell = self.widths[stage] // 2
            self.houses[key] = Warehouse(cell, cell, k)
        layer = KWConv2d(cin, cout, k, stride, self.houses[key])
        self.layers.append(layer)
        return layer


class KWResNet(nn.Module):
    """ResNet whose block convolutions are KernelWarehouse convolutions (stem, shortcuts and fc plain)."""

    def __init__(self, block: type, layers: tuple[int, ...], num_classes: int = 1000, width: int = 64):
        super().__init__()
        widths = [width * 2**i for i in range(len(layers))]
        self.warehouse = WarehouseStore(widths)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = width, []
        for i, (planes, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, 2 if (i > 0 and j == 0) else 1, self.warehouse, i))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(inplanes, num_classes)
        for layer in self.warehouse.layers:
            layer.finish()
        self.warehouse.layers = []

    def set_temperature(self, tau: float) -> None:
        for m in self.modules():
            if isinstance(m, KWConv2d):
                m.temperature = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def kw_resnet18(num_classes: int = 1000, width: int = 64, layers=(2, 2, 2, 2), temperature: float = 0.3) -> KWResNet:
    net = KWResNet(KWBasicBlock, tuple(layers), num_classes, width)
    net.set_temperature(temperature)
    return net


def kw_resnet50(num_classes: int = 1000, width: int = 64, layers=(3, 4, 6, 3), temperature: float = 0.3) -> KWResNet:
    net = KWResNet(KWBottleneck, tuple(layers), num_classes, width)
    net.set_temperature(temperature)
    return net


# ----------------------------------------------------------------------------------------- WeightNet


class WeightNetConv(nn.Module):
    """WeightNet's kernel generator and batch-folded convolution; ``x_gap`` comes from the block."""

    def __init__(self, inp: int, oup: int, ksize: int, stride: int, gap_channels: int, M: int = 2, G: int = 2):
        super().__init__()
        self.inp, self.oup, self.ksize, self.stride, self.pad = inp, oup, ksize, stride, ksize // 2
        self.wn_fc1 = nn.Conv2d(gap_channels, M * oup, 1, 1, 0, bias=True)
        self.wn_fc2 = nn.Conv2d(M * oup, oup * inp * ksize * ksize, 1, 1, 0, groups=G * oup, bias=False)

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        x_w = self.wn_fc2(torch.sigmoid(self.wn_fc1(x_gap)))
        x = x.reshape(1, -1, x.shape[2], x.shape[3])
        x_w = x_w.reshape(-1, self.inp, self.ksize, self.ksize)
        x = F.conv2d(x, weight=x_w, stride=self.stride, padding=self.pad, groups=x_w.shape[0] // self.oup)
        return x.reshape(-1, self.oup, x.shape[2], x.shape[3])


class WeightNetBlock(nn.Module):
    """A ResNet basic block whose 3×3 convolutions are WeightNet convolutions sharing one squeeze."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        squeeze = max(16, inplanes // 16)
        self.reduce = nn.Conv2d(inplanes, squeeze, 1, bias=True)
        self.conv1 = WeightNetConv(inplanes, planes, 3, stride, squeeze)
        self.bn1 = nn.BatchNorm2d(planes)
        self.reduce2 = nn.Conv2d(planes, max(16, planes // 16), 1, bias=True)
        self.conv2 = WeightNetConv(planes, planes, 3, 1, max(16, planes // 16))
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, self.reduce(x.mean(dim=(2, 3), keepdim=True)))))
        out = self.bn2(self.conv2(out, self.reduce2(out.mean(dim=(2, 3), keepdim=True))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class WeightNetResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, inplanes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            for j in range(n):
                blocks.append(WeightNetBlock(inplanes, planes, 2 if (i > 0 and j == 0) else 1))
                inplanes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():  # the generated kernels at a He-like scale, so the maps stay O(1)
            if isinstance(m, WeightNetConv):
                nn.init.normal_(m.wn_fc2.weight, std=math.sqrt(2.0 / (m.inp * m.ksize**2)) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def weightnet_resnet18(num_classes: int = 1000, width: int = 64, layers=(2, 2, 2, 2)) -> WeightNetResNet:
    return WeightNetResNet(tuple(layers), num_classes, width)


# ------------------------------------------------------------------------------------------ variants


class Squeeze(nn.Module):
    """Routing from a separate module: softmax over the experts of a pooled, squeezed input."""

    def __init__(self, c: int, experts: int):
        super().__init__()
        self.fc = nn.Linear(c, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x.flatten(2).mean(-1)), dim=1)


class VariantConv(nn.Module):
    """An in-house dynamic convolution: expert kernels mixed with ``einsum``, the batch-folded call.

    ``bias``: "call" (passed to the call), "after" (added to the output), None; ``fold``: "view" or
    "reshape" (with -1); ``dims``: 1 (conv1d) or 2.
    """

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1,
                 experts: int = 3, bias: str | None = "call", fold: str = "view", dims: int = 2):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.dil, self.g = cin, cout, k, stride, dilation, groups
        self.bias_mode, self.fold, self.dims = bias, fold, dims
        self.experts = nn.Parameter(torch.randn(experts, cout, cin // groups, *([k] * dims)) / math.sqrt(cin // groups * k**dims))
        self.expert_bias = nn.Parameter(0.1 * torch.randn(experts, cout))

    def forward(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        spatial = x.shape[2:]
        w = torch.einsum("be,eoi...->boi...", routing, self.experts)
        w = w.reshape(b * self.cout, self.cin // self.g, *w.shape[3:])
        bias = torch.einsum("be,eo->bo", routing, self.expert_bias).reshape(-1)
        xf = x.view(1, b * self.cin, *spatial) if self.fold == "view" else x.reshape(1, -1, *spatial)
        conv = F.conv1d if self.dims == 1 else F.conv2d
        pad = self.dil * (self.k - 1) // 2
        y = conv(xf, w, bias if self.bias_mode == "call" else None, self.stride, pad, self.dil, groups=self.g * b)
        y = y.view(b, self.cout, *y.shape[2:])
        if self.bias_mode == "after":
            y = y + bias.view(b, self.cout, *([1] * self.dims))
        return y


class VariantNet(nn.Module):
    """conv1d and conv2d variants with routing computed outside them, groups 2, stride 2, dilation 2."""

    def __init__(self, num_classes: int = 10, width: int = 16, experts: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.route1 = Squeeze(width, experts)
        self.dyn1 = VariantConv(width, 2 * width, 3, stride=2, groups=2, experts=experts, bias="call", fold="view")
        self.route2 = Squeeze(2 * width, experts)
        self.dyn2 = VariantConv(2 * width, 2 * width, 3, dilation=2, experts=experts, bias="after", fold="reshape")
        self.route3 = Squeeze(2 * width, experts)
        self.dyn3 = VariantConv(2 * width, 2 * width, 3, stride=2, groups=2, experts=experts, bias="call",
                                fold="reshape", dims=1)
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.dyn1(x, self.route1(x)))
        x = F.relu(self.bn(self.dyn2(x, self.route2(x))))
        n, c, h, w = x.shape
        seq = x.flatten(2)  # (N, C, H·W): a 1-D dynamic convolution along the flattened map
        seq = F.relu(self.dyn3(seq, self.route3(seq)))
        return self.fc(seq.mean(-1))


def variant_net(num_classes: int = 10, width: int = 16, experts: int = 3) -> VariantNet:
    return VariantNet(num_classes, width, experts)
