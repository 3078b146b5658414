"""The static-batch form of a DCD convolution: each sample's kernel, run as one grouped convolution.

For an export with a fixed batch N (and a fixed input size), a DCD convolution can form every
sample's full kernel and run the N samples as the N groups of one convolution with a computed
weight, the way a static network runs one convolution::

    x (N, C_in, H, W)  →  (1, N·C_in, H, W)
    weight (N·C_out, C_in, k, k),  bias (N·C_out),  group = N
    out (1, N·C_out, H', W')  →  (N, C_out, H', W')        (no reshape at all when N = 1)

With the folded constants of ``families/dcd_conv.py`` (W0' = diag(g)·W0/3 with the BatchNorm
that follows the layer, Q' = diag(a1)·Q, P' = diag(g)·P, M = diag(a2)·Φ + I from the attention
Gemms, the channel scale as 3·s) the kernel of one sample is::

    K = diag(3·s)·W0'  +  (P'·M·Q') at the centre tap,     bias = P'·M·b1 + c

For a 1×1 layer the centre tap is the whole kernel; for a k×k layer (odd k, padding k//2, any
stride) the low-rank term is a 1×1 kernel with the layer's stride, which reads exactly the input
pixel of the centre tap, so it is padded to k×k with zeros. The per-channel scale, the low-rank
branch and the bias all go into the weights: the output needs no pass besides the convolution,
and ONNX Runtime fuses the convolution with the ReLU/Clip that follows it when N = 1.

The graph is batch-specific (group and reshapes are the batch): its Conv takes a computed weight,
which dcd-deploy's graph rules allow only for this node, found by its scope name
:data:`CONV_SCOPE`, in a file whose metadata says it is batch-specific.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import LoweredAttention

FORM = "grouped"
CONV_SCOPE = "batch_specific_conv"  # the attribute name of the convolution: the ONNX node's scope


class _BatchConv(nn.Module):
    """The convolution with computed weights (its own module, so the exported node carries its name)."""

    def __init__(self, stride: int, padding: int, groups: int):
        super().__init__()
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, 1, self.groups)


class GroupedDcdConv(LoweredAttention):
    """A DCD convolution for a fixed batch: per-sample kernels formed, then one grouped convolution.

    Built from the layer's ``factored`` lowering (``families/dcd_conv.LoweredDcdConv``), whose
    folded constants it takes: W0' (``conv``), Q' and b1 (``q``), P' and c (``p``), the attention Gemms.
    """

    def __init__(self, factored: nn.Module, batch: int, kernel: int, stride: int, padding: int):
        conv = factored.conv
        c_in, c_out, latent = conv.in_channels, conv.out_channels, factored.dim
        super().__init__(factored.fc.in_features, factored.fc.out_features, latent, c_out)
        if batch < 1 or factored.in_hw is None:
            raise ValueError("the grouped form needs a static batch and a static input size")
        self.form, self.kind = FORM, factored.kind
        self.batch, self.c_in, self.kernel = batch, c_in, kernel
        self.in_hw, self.out_hw = factored.in_hw, factored.out_hw
        self.pool = factored.pool
        self.batch_specific_conv = _BatchConv(stride, padding, batch)
        with torch.no_grad():
            for part in ("fc", "se", "phi", "scale"):
                getattr(self, part).load_state_dict(getattr(factored, part).state_dict())
            w0 = conv.weight.detach().clone()
            self.register_buffer("w0", w0[:, :, 0, 0].contiguous() if kernel == 1 else w0)
            self.register_buffer("q_w", factored.q.weight.detach()[:, :, 0, 0].clone())
            self.register_buffer("q_b", factored.q.bias.detach().view(latent, 1).clone())
            self.register_buffer("p_w", factored.p.weight.detach()[:, :, 0, 0].clone())
            self.register_buffer("p_b", factored.p.bias.detach().view(c_out, 1).clone())
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()

    def kernels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample's kernel (N·C_out, C_in, k, k) and bias (N·C_out) for the input ``x``."""
        n, k, c_in, c_out = self.batch, self.kernel, self.c_in, self.c_out
        m, s = self.attend(self.pool(x))
        pm = torch.matmul(self.p_w, m)  # (N, C_out, L)
        low = torch.matmul(pm, self.q_w)  # (N, C_out, C_in)
        bias = torch.matmul(pm, self.q_b) + self.p_b  # (N, C_out, 1)
        if k == 1:
            kernel = s.unsqueeze(2) * self.w0 + low
        else:
            centre = F.pad(low.reshape(n, c_out, c_in, 1, 1), [k // 2] * 4)
            kernel = s.reshape(n, c_out, 1, 1, 1) * self.w0 + centre
        return kernel.reshape(n * c_out, c_in, k, k), bias.reshape(n * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.kernels(x)
        n = self.batch
        if n == 1:
            return self.batch_specific_conv(x, weight, bias)
        h, w = self.in_hw
        out = self.batch_specific_conv(x.reshape(1, n * self.c_in, h, w), weight, bias)
        return out.reshape(n, self.c_out, *self.out_hw)
