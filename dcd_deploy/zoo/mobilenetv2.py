"""MobileNetV2-DCD: inverted residual blocks whose 1×1 convolutions are DYModules.

``width_mult`` and ``fc_squeeze`` are read back from a checkpoint by :func:`infer_mobilenetv2`:
the width whose channel rule gives every block's channel count, and the divisor that gives every
DYModule's attention width.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ArchitectureError
from .head import classifier_options, dcd_classifier
from .layers import DYModule
from .registry import Inference, StateDict, register_arch, register_probe

# Read without running this module (see catalog): keep it a literal.
ARCHITECTURES = {
    "mobilenetv2_dcd": {
        "family": "mobilenetv2",
        "defaults": {"num_classes": 1000, "width_mult": 1.0, "dropout": 0.2, "fc_squeeze": 8},
    },
}

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
    def __init__(self, num_classes: int, width_mult: float, dropout: float, fc_squeeze: int):
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
        self.classifier = dcd_classifier(output_channel, num_classes, dropout)
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


@register_arch("mobilenetv2_dcd")
def mobilenetv2_dcd(num_classes: int, width_mult: float, dropout: float, fc_squeeze: int) -> nn.Module:
    return MobileNetV2DCD(num_classes=num_classes, width_mult=width_mult, dropout=dropout, fc_squeeze=fc_squeeze)


# Values tried first, so that the answer is the one a person would have typed.
COMMON_WIDTHS = (1.0, 0.5, 0.75, 0.35, 0.25, 1.4, 1.3, 1.25, 1.5, 2.0, 0.1)
FINE_WIDTHS = tuple(round(0.05 * i, 2) for i in range(2, 61))
COMMON_SQUEEZES = (8, 16, 4, 32, 2, 1, 64, 12, 24)


def channels(width: float) -> tuple[int, list[int], int]:
    """Output channels of the stem, of every inverted residual block and of the last 1×1 conv."""
    div = channel_divisor(width)
    stem = make_divisible(32 * width, div)
    outs = [make_divisible(c * width, div) for _, c, n, _ in MOBILENETV2_CFGS for _ in range(n)]
    last = make_divisible(1280 * width, div) if width > 1.0 else 1280
    return stem, outs, last


def _width_mult(sd: StateDict, notes: list[str]) -> float:
    stem = sd["features.0.0.weight"].shape[0]
    outs = []
    for i in range(1, 1 + sum(n for _, _, n, _ in MOBILENETV2_CFGS)):
        key = f"features.{i}.conv.6.conv.weight" if f"features.{i}.conv.6.conv.weight" in sd else f"features.{i}.conv.3.weight"
        outs.append(sd[key].shape[0] if key in sd else None)
    last = sd["conv.0.weight"].shape[0] if "conv.0.weight" in sd else None
    widths = [w for w in dict.fromkeys(COMMON_WIDTHS + FINE_WIDTHS) if channels(w) == (stem, outs, last)]
    if not widths:
        raise ArchitectureError(
            f"The checkpoint looks like MobileNetV2-DCD but no width_mult gives its channel counts "
            f"(stem {stem}, blocks {outs}, last {last}).",
            "If the network is your own variant, build it with --model package.module:factory.",
        )
    notes.append(f"width_mult={widths[0]} from the channel counts (stem {stem}, last block {outs[-1]})")
    return widths[0]


def _fc_squeeze(sd: StateDict, notes: list[str]) -> int:
    """Every DYModule's attention width is ``max(max(pooled, L²) // fc_squeeze, 4)``."""
    modules = []
    for key, weight in sd.items():
        m = re.fullmatch(r"(features\.\d+\.conv\.\d+)\.fc\.0\.weight", key)
        if m:
            squeeze, pooled = weight.shape
            dim = sd[f"{m.group(1)}.conv_q.weight"].shape[0]
            modules.append((squeeze, pooled, dim))
    candidates = list(COMMON_SQUEEZES) + [f for f in range(1, 129) if f not in COMMON_SQUEEZES]
    squeezes = [f for f in candidates if all(max(max(p, d * d) // f, 4) == s for s, p, d in modules)]
    if not squeezes:
        raise ArchitectureError(
            "The checkpoint looks like MobileNetV2-DCD but no fc_squeeze gives the widths of its attention layers.",
            "If the network is your own variant, build it with --model package.module:factory.",
        )
    notes.append(f"fc_squeeze={squeezes[0]} from the attention widths (fc.0.weight) of {len(modules)} DYModules")
    return squeezes[0]


@register_probe("features.0.0.weight")
def infer_mobilenetv2(sd: StateDict) -> Inference:
    notes: list[str] = []
    options = {"width_mult": _width_mult(sd, notes), "fc_squeeze": _fc_squeeze(sd, notes)}
    dropout = ARCHITECTURES["mobilenetv2_dcd"]["defaults"]["dropout"]
    return Inference("mobilenetv2_dcd", {**options, **classifier_options(sd, dropout, notes)}, notes)
