"""Per-sample convolutions: ``out[n] = conv2d(x[n], weight[n], bias[n])`` with a dynamic batch.

Two ways, the same arguments (stride, padding and dilation an int or an (h, w) pair; kernels may be
rectangular, e.g. (1, k) for a 1-D convolution run as 2-D with H = 1):

* :func:`per_sample_conv` exports as ONE custom node (domain ``dcd_deploy``, op ``PerSampleConv``),
  which :mod:`dcd_deploy.exporting.loops` turns into a standard ONNX ``Loop`` over the samples
  running one ``Conv`` each: control flow, 1× the arithmetic.
* :func:`per_sample_conv_unfold` has no control flow: the input is unfolded by one static depthwise
  Conv with one-hot kernels into (N, C_in·kh·kw, H', W') (channel c·kh·kw + t is input channel c at
  tap t, so group j's C_in/g·kh·kw columns are contiguous), and one batched MatMul applies the
  per-sample kernel (N, g, C_out/g, C_in/g·kh·kw). Only static operators and batch-keeping Reshapes:
  CUDA graphs capture it and tract runs it.

The expert families' ``loop`` and ``unfold`` forms (:mod:`dcd_deploy.lowering.dynamic_forms`) and the
generic lowering build on these.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .shapes import keep_batch_reshape

# The custom node the loop form exports, replaced by a standard ONNX Loop after export.
PER_SAMPLE_DOMAIN = "dcd_deploy"
PER_SAMPLE_OP = "PerSampleConv"

Pair = int | tuple[int, int]


def pair(value: Pair) -> tuple[int, int]:
    """``(v, v)`` for an int, the pair itself for an (h, w) pair."""
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


class _PerSampleConvFn(torch.autograd.Function):
    """Conv2d of each sample with its own weight (and bias); exported as one custom node."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                groups: int):
        n = x.shape[0]
        if bias is not None and bias.dim() == 1:
            bias = bias.repeat(n)
        out = F.conv2d(x.reshape(1, -1, x.shape[2], x.shape[3]), weight.reshape(-1, *weight.shape[2:]),
                       None if bias is None else bias.reshape(-1), stride, padding, dilation, groups * n)
        return out.view(n, -1, out.shape[2], out.shape[3]).clone()  # not a view: callers may write in place

    @staticmethod
    def symbolic(g, x, weight, bias, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                 groups: int):
        inputs = [x, weight] if bias is None or bias.node().mustBeNone() else [x, weight, bias]
        per_sample_bias = int(len(inputs) == 3 and bias.type().dim() == 2)
        out = g.op(f"{PER_SAMPLE_DOMAIN}::{PER_SAMPLE_OP}", *inputs, strides_i=list(stride),
                   pads_i=[*padding, *padding], dilations_i=list(dilation), group_i=groups,
                   per_sample_bias_i=per_sample_bias)
        out.setType(x.type().with_sizes([None] * 4))
        return out


def per_sample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair = 1,
                    padding: Pair = 0, dilation: Pair = 1, groups: int = 1) -> torch.Tensor:
    """``out[n] = conv2d(x[n], weight[n], bias[n])``: ``weight`` (N, C_out, C_in/g, kh, kw), ``bias``
    (N, C_out) per sample or (C_out,) shared, or None; stride, padding and dilation an int or an
    (h, w) pair. Exported as one ``PerSampleConv`` node, an ONNX Loop once expanded
    (:mod:`dcd_deploy.exporting.loops`)."""
    return _PerSampleConvFn.apply(x, weight, bias, pair(stride), pair(padding), pair(dilation), groups)


def _one_hot_taps(c_in: int, kh: int, kw: int, dtype: torch.dtype) -> torch.Tensor:
    """(C_in·kh·kw, 1, kh, kw): output channel c·kh·kw + t of a depthwise Conv with these weights is
    input channel c at tap t (row-major over the kh×kw window).

    Built in NumPy so that a tracing exporter records it as one constant, not as the ops filling it."""
    eye = np.eye(kh * kw, dtype=np.float64).reshape(kh * kw, 1, kh, kw)
    return torch.from_numpy(np.ascontiguousarray(np.tile(eye, (c_in, 1, 1, 1)))).to(dtype)


def unfold_taps(x: torch.Tensor, kernel: tuple[int, int], stride: Pair = 1, padding: Pair = 0,
                dilation: Pair = 1) -> torch.Tensor:
    """(N, C_in·kh·kw, H', W'): channel c·kh·kw + t is input channel c read at tap t of each output
    pixel's window. One static depthwise Conv with one-hot kernels (nothing when the kernel is 1×1
    with stride 1 and no padding; a strided Slice when only the stride is there)."""
    kh, kw = kernel
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    if kh == kw == 1 and padding == (0, 0):
        return x if stride == (1, 1) else x[:, :, :: stride[0], :: stride[1]]
    c_in = x.shape[1]
    if isinstance(c_in, torch.Tensor):  # tracing: the channel count is static in any graph we export
        c_in = int(c_in)
    return F.conv2d(x, _one_hot_taps(c_in, kh, kw, x.dtype), None, stride, padding, dilation, c_in)


def per_sample_conv_unfold(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair = 1,
                           padding: Pair = 0, dilation: Pair = 1, groups: int = 1, *,
                           out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """``out[n] = conv2d(x[n], weight[n], bias[n])`` with no control flow: the loop-free twin of
    :func:`per_sample_conv` (same arguments; ``weight`` may also have batch 1, shared by every sample).

    The input is unfolded by one static Conv (:func:`unfold_taps`) into (N, g, C_in/g·kh·kw, H'W')
    (group j's columns are contiguous: channel c·kh·kw + t), then one batched MatMul with the kernel
    (N, g, C_out/g, C_in/g·kh·kw) gives (N, g, C_out/g, H'W'), reshaped to (N, C_out, H', W').
    Depthwise layers take the same MatMul (g vector-matrix products per sample): on ONNX Runtime CPU it
    ran 1.2-1.3× faster than a Mul and a ReduceSum over the taps (144 and 576 channels, batch 1 and 8).
    Every Reshape has a constant shape with 0 or -1 in the batch
    position. ``out_hw`` (H', W'), when the caller knows it, keeps the last Reshape constant too;
    without it the exported graph reads H', W' from the unfolded map's shape (any input size).
    """
    kh, kw = weight.shape[-2], weight.shape[-1]
    c_out, cin_g = weight.shape[1], weight.shape[2]
    if isinstance(kh, torch.Tensor):  # tracing: the kernel's shape is static
        kh, kw, c_out, cin_g = int(kh), int(kw), int(c_out), int(cin_g)
    cout_g, taps = c_out // groups, cin_g * kh * kw
    cols = unfold_taps(x, (kh, kw), stride, padding, dilation)
    if out_hw is None:
        out_hw = (cols.shape[2], cols.shape[3])  # traced: read from the map at run time
    cols = keep_batch_reshape(cols, (groups, taps, -1))  # (N, g, C_in/g·kh·kw, H'W')
    out = torch.matmul(keep_batch_reshape(weight, (groups, cout_g, taps)), cols)  # (N, g, C_out/g, H'W')
    if bias is not None:
        out = out + bias.view(-1, groups, cout_g, 1)
    if all(isinstance(d, int) for d in out_hw):
        return keep_batch_reshape(out, (c_out, *out_hw))
    return out.reshape(-1, c_out, out_hw[0], out_hw[1])
