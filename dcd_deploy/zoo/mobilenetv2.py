"""MobileNetV2-DCD: inverted residual blocks whose 1×1 convolutions are DYModules."""

from __future__ import annotations

import torch
from torch import nn

from .layers import DYCls, DYModule
from .registry import register_arch

# t (expansion), c (channels), n (repeats), s (stride of the first repeat)
MOBILENETV2_CFGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round to a multiple of ``divisor``, never more than 10% below ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, fc_squeeze: int = 8):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        if expand_ratio == 1:
            self.conv = nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            )
        else:
            self.conv = nn.Sequential(
                DYModule(inp, hidden, fc_squeeze),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                DYModule(hidden, oup, fc_squeeze),
                nn.BatchNorm2d(oup),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


def channel_divisor(width_mult: float) -> int:
    return 4 if width_mult == 0.1 else 8


class MobileNetV2DCD(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2, fc_squeeze: int = 8):
        super().__init__()
        div = channel_divisor(width_mult)
        input_channel = make_divisible(32 * width_mult, div)
        layers: list[nn.Module] = [_conv_bn(3, input_channel, 3, 2)]
        for t, c, n, s in MOBILENETV2_CFGS:
            output_channel = make_divisible(c * width_mult, div)
            for i in range(n):
                layers.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, fc_squeeze))
                input_channel = output_channel
        self.features = nn.Sequential(*layers)
        output_channel = make_divisible(1280 * width_mult, div) if width_mult > 1.0 else 1280
        self.conv = _conv_bn(input_channel, output_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        head = DYCls(output_channel, num_classes)
        self.classifier = nn.Sequential(nn.Dropout(dropout), head) if dropout > 0 else nn.Sequential(head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.features(x))
        x = self.avgpool(x).flatten(1)
        return self.classifier(x)


@register_arch("mobilenetv2_dcd", family="mobilenetv2")
def mobilenetv2_dcd(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2, fc_squeeze: int = 8) -> nn.Module:
    return MobileNetV2DCD(num_classes=num_classes, width_mult=width_mult, dropout=dropout, fc_squeeze=fc_squeeze)
