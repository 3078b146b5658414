"""ResNet-DCD (resnet18/34 with conv_basic_dy, resnet50/101/152 with conv_dy).

Names follow the reference implementation. One deliberate difference: the reference ends with
``AvgPool2d(7, stride=1)``, which is only right when the last feature map is 7×7 (224×224
input). We use a global average pool (``AdaptiveAvgPool2d(1)``): identical at 224×224, it has
no parameters (checkpoints load unchanged) and lets other input sizes work.

The depth and block type are read back from a checkpoint by counting the blocks of each stage
(:func:`infer_resnet`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ArchitectureError
from .head import classifier_options, dcd_classifier
from .layers import conv_basic_dy, conv_dy
from .registry import Inference, StateDict, register_arch, register_probe

# Read without running this module (see catalog): keep it a literal.
ARCHITECTURES = {
    "resnet18_dcd": {"family": "resnet", "defaults": {"num_classes": 1000, "dropout": 0.1}},
    "resnet34_dcd": {"family": "resnet", "defaults": {"num_classes": 1000, "dropout": 0.1}},
    "resnet50_dcd": {"family": "resnet", "defaults": {"num_classes": 1000, "dropout": 0.1}},
    "resnet101_dcd": {"family": "resnet", "defaults": {"num_classes": 1000, "dropout": 0.1}},
    "resnet152_dcd": {"family": "resnet", "defaults": {"num_classes": 1000, "dropout": 0.1}},
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv_basic_dy(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_basic_dy(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv_dy(inplanes, planes, 1, 1, 0)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv_dy(planes, planes, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv_dy(planes, planes * 4, 1, 1, 0)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ResNetDCD(nn.Module):
    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int, dropout: float):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = dcd_classifier(512 * block.expansion, num_classes, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.classifier(x)


RESNET_DEPTHS = {
    "resnet18_dcd": (BasicBlock, [2, 2, 2, 2]),
    "resnet34_dcd": (BasicBlock, [3, 4, 6, 3]),
    "resnet50_dcd": (Bottleneck, [3, 4, 6, 3]),
    "resnet101_dcd": (Bottleneck, [3, 4, 23, 3]),
    "resnet152_dcd": (Bottleneck, [3, 8, 36, 3]),
}


def _register(name: str) -> None:
    block, layers = RESNET_DEPTHS[name]

    def factory(num_classes: int, dropout: float) -> nn.Module:
        return ResNetDCD(block, layers, num_classes=num_classes, dropout=dropout)

    factory.__name__ = factory.__qualname__ = name
    register_arch(name)(factory)


for _name in RESNET_DEPTHS:
    _register(_name)


@register_probe("layer1.0.conv1.conv.weight")
def infer_resnet(sd: StateDict) -> Inference:
    """Block type (``layer1.0.conv3`` exists: Bottleneck) and blocks per stage give the depth."""
    bottleneck = "layer1.0.conv3.conv.weight" in sd
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    kind = "Bottleneck" if bottleneck else "BasicBlock"
    for name, (block, layers) in RESNET_DEPTHS.items():
        if (block is Bottleneck) == bottleneck and layers == counts:
            notes = [f"{kind} blocks per stage {counts}"]
            dropout = ARCHITECTURES[name]["defaults"]["dropout"]
            return Inference(name, classifier_options(sd, dropout, notes), notes)
    raise ArchitectureError(
        f"The checkpoint is a ResNet-DCD with {kind} blocks {counts} per stage, which is no registered architecture.",
        "Build the network yourself with --model package.module:factory.",
    )
