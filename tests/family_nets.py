"""Small random CondConv / DyConv / ODConv networks for the tests of parity, bench and export.

Built from the reference layers in ``sample_models/dynamic_nets.py``, re-initialised so that the
output depends on the input at every depth (a default-initialised random network's logits barely
do, and a changed layer could go unnoticed), with BatchNorm statistics that are not the identity.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sample_models import dynamic_nets as dn

SIZE = 48

# family -> (factory, its options, the layer whose expert weight is changed)
NETWORKS = {
    "condconv": (dn.efficientnet_cc, {"num_classes": 10, "width_mult": 0.25, "depth_mult": 0.25, "num_features": 64},
                 "blocks.5.0.conv_pw"),
    "dyconv": (dn.dy_resnet, {"layers": (1, 1, 1, 1), "num_classes": 10, "width": 8, "temperature": 1}, "layer3.0.conv1"),
    "odconv": (dn.od_resnet, {"layers": (1, 1, 1, 1), "num_classes": 10, "width": 8}, "layer2.0.conv2"),
}


def _fan_in(module: torch.nn.Module, weight: torch.Tensor) -> int:
    if isinstance(module, dn.CondConv2d):
        return int(np.prod(module.weight_shape[1:]))
    return int(weight[0, 0].numel() if weight.dim() == 5 else weight[0].numel())


def build(family: str, seed: int = 0) -> torch.nn.Module:
    """A random network of ``family``: weights drawn with a ReLU-gain fan-in scale, BatchNorms with
    non-trivial statistics and affine parameters."""
    factory, options, _ = NETWORKS[family]
    torch.manual_seed(seed)
    model = factory(**options).eval()
    with torch.no_grad():
        for m in model.modules():
            weight = m._parameters.get("weight")
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif weight is not None and weight.dim() > 1:
                weight.normal_(0.0, 1.4 / _fan_in(m, weight) ** 0.5)
    return model


def train_mode_batchnorms(model: torch.nn.Module, size: int, batches: int = 3, batch: int = 4,
                          seed: int = 1) -> torch.nn.Module:
    """BatchNorm running statistics from a few random batches in train mode (cumulative average), as
    one calibrates a random network; returns it in eval mode."""
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size, generator=gen))
    return model.eval()


NOISY_SIZE = 32


def deep_random_dyconv(seed: int = 3) -> torch.nn.Module:
    """24 DyConv blocks (width 8, temperature 0.3), random weights, BatchNorms calibrated in train mode at
    NOISY_SIZE: like the public DyConv ResNet-18 with random weights, its float32 evaluation is off its
    float64 one by more than 1e-5 (here ~1e-4 of max|logit|, seeds 0-7 measured 3e-6 to 2e-3)."""
    torch.manual_seed(seed)
    model = dn.dy_resnet(layers=(6, 6, 6, 6), width=8, temperature=0.3, num_classes=10)
    return train_mode_batchnorms(model, NOISY_SIZE)


class Float32Inside(torch.nn.Module):
    """A network whose forward() makes a float32 tensor, so that a float64 copy of it cannot run."""

    def __init__(self, net: torch.nn.Module, classes: int = 10):
        super().__init__()
        self.net, self.classes = net, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) @ torch.eye(self.classes)


class HyperConv(torch.nn.Module):
    """A dynamic convolution of no supported family: a Linear generates each sample's 3×3 kernel
    from the pooled input, and one grouped convolution runs the batch (groups = batch)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.generator = torch.nn.Linear(channels, channels * channels * 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        kernel = self.generator(x.mean((2, 3))).view(n * self.channels, self.channels, 3, 3)
        y = torch.nn.functional.conv2d(x.reshape(1, -1, *x.shape[2:]), kernel, None, 1, 1, 1, n)
        return y.view(n, self.channels, *y.shape[2:])


class LoopHyperConv(HyperConv):
    """HyperConv's kernel applied by a Python loop over the samples: one convolution per sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.generator(x.mean((2, 3))).view(x.shape[0], self.channels, self.channels, 3, 3)
        return torch.cat([torch.nn.functional.conv2d(x[i:i + 1], kernel[i], None, 1, 1) for i in range(x.shape[0])])


def hyper_net(num_classes: int = 10, loop: bool = False) -> torch.nn.Module:
    """A small network whose one dynamic convolution (``body.hyper``) matches no structural family:
    the batch-folded idiom (the generic family lowers it), or with ``loop`` a Python loop over the
    samples (which nothing lowers)."""
    body = torch.nn.Sequential()
    body.add_module("stem", torch.nn.Conv2d(3, 8, 3, 2, 1))
    body.add_module("relu", torch.nn.ReLU())
    body.add_module("hyper", LoopHyperConv(8) if loop else HyperConv(8))
    return torch.nn.Sequential(body, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, num_classes))


def loop_hyper_net(num_classes: int = 10) -> torch.nn.Module:
    return hyper_net(num_classes, loop=True)
