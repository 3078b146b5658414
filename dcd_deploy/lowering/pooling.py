"""Exact adaptive average pooling to 1×1 or 2×2, in ops every ONNX backend handles.

``AdaptiveAvgPool2d(2)`` on an H-row map uses bins ``floor(i·H/2) .. ceil((i+1)·H/2) − 1``;
for output 2 both bins hold ``ceil(H/2)`` rows and start at 0 and ``floor(H/2)``, so when
H ≥ 2 the pool is exactly ``AveragePool(kernel=ceil(H/2), stride=floor(H/2))`` (overlapping
when H is odd, e.g. 7×7 → kernel 4, stride 3). With a known input size we emit that single op;
with a dynamic size, two slices per axis whose bounds come from the runtime shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExactAdaptiveAvgPool(nn.Module):
    """Adaptive average pool to ``out``×``out`` (1 or 2), flattened channel-major to (B, C·out²)."""

    def __init__(self, out: int, in_hw: tuple[int, int] | None):
        super().__init__()
        if out not in (1, 2):
            raise ValueError(f"output size {out} is not 1 or 2")
        self.out = out
        self.in_hw = in_hw  # None: dynamic input size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out == 1:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.in_hw is not None and min(self.in_hw) >= 2:
            h, w = self.in_hw
            pooled = F.avg_pool2d(x, kernel_size=(-(-h // 2), -(-w // 2)), stride=(h // 2, w // 2))
            return pooled.flatten(1)
        h, w = x.shape[2], x.shape[3]
        rows = torch.stack([x[:, :, : (h + 1) // 2].mean(2), x[:, :, h // 2 :].mean(2)], dim=2)  # B,C,2,W
        cells = torch.stack([rows[..., : (w + 1) // 2].mean(3), rows[..., w // 2 :].mean(3)], dim=3)  # B,C,2,2
        return cells.flatten(1)
