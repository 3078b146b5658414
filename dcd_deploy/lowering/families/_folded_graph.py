"""The generic family's ``folded`` form on the torch side: the folded call as one custom node.

The node (domain ``dcd_deploy``, op ``FoldedConv``) is replaced by standard ONNX after export, a
ladder of ``If`` on the batch (``dcd_deploy.exporting.folded``, where the algebra is).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..dynamic_forms import PER_SAMPLE_DOMAIN

FOLDED_OP = "FoldedConv"


class FoldedConvFn(torch.autograd.Function):
    """The folded convolution as the user's code calls it (``x`` 4-D, ``pads`` ONNX order
    (h0, w0, h1, w1)); exported as one ``FoldedConv`` node."""

    @staticmethod
    def forward(ctx, x, weight, bias, c_in: int, c_out: int, group: int, kernel: tuple[int, int],
                stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int]):
        h0, w0, h1, w1 = pads
        n = x.shape[1] // c_in
        return F.conv2d(F.pad(x, (w0, w1, h0, h1)), weight, bias, stride, 0, dilation, group * n)

    @staticmethod
    def symbolic(g, x, weight, bias, c_in: int, c_out: int, group: int, kernel: tuple[int, int],
                 stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int]):
        inputs = [x, weight] if bias is None or bias.node().mustBeNone() else [x, weight, bias]
        out = g.op(f"{PER_SAMPLE_DOMAIN}::{FOLDED_OP}", *inputs, c_in_i=c_in, c_out_i=c_out, group_i=group, kernel_shape_i=list(kernel),
                   strides_i=list(stride), pads_i=list(pads), dilations_i=list(dilation))
        out.setType(x.type().with_sizes([None] * 4))
        return out
