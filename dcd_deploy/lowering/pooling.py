"""Exact adaptive average pooling to 1×1 or 2×2, in ops every ONNX backend handles.

``AdaptiveAvgPool2d(2)`` on an H-row map uses bins ``floor(i·H/2) .. ceil((i+1)·H/2) − 1``;
for output 2 both bins hold ``ceil(H/2)`` rows and start at 0 and ``floor(H/2)``, so when
H ≥ 2 the pool is exactly ``AveragePool(kernel=ceil(H/2), stride=floor(H/2))`` (overlapping
when H is odd, e.g. 7×7 → kernel 4, stride 3). With a known input size we emit that single op
(``GlobalAveragePool`` for output 1; constant slices when H or W is 1).

With a dynamic size the bounds come from the runtime shape, computed once per pool: one
``Shape``, then ``ceil = (hw + 1) / 2`` and ``floor = hw / 2`` for both axes together; the rows
are summed over ``[0, ceil_h)`` and ``[floor_h, H)``, then the columns of that 2-row map over
``[0, ceil_w)`` and ``[floor_w, W)``, and the four sums are divided once by the bin size
``ceil_h·ceil_w`` (output 1: the sum over H and W divided by ``H·W``). Sums and one division,
not ``ReduceMean``/``GlobalAveragePool``: a mean over a symbolic extent makes tract's optimiser
(its region-of-interest pass) build symbolic expressions that grow with the depth of the network
(minutes on the sample MobileNetV2), while a count read from the shape is an ordinary tensor to
it (about a second). The count takes the map's type with ``CastLike`` (opset 15), so a float16
conversion keeps the graph valid; below opset 15 the bins are averaged by
``ReduceMean`` instead.

**Channels-last** (``channels_last=True``, known size; what int8 exports use): the 2×2 pool is
one product with a constant pooling matrix, ``P · X`` where X is the map read channels-last as
(B, H·W, C) and P (4, H·W) holds ``1/|bin|`` on each bin's pixels (overlapping bins included),
then the (B, 4, C) result is flattened channel-major (or bin-major, ``bin_major``). ONNX Runtime
runs its convolutions in int8 NHWC, so the ``Transpose`` to channels-last cancels against its
layout transpose, and the product quantizes to one ``QLinearMatMul`` that reads the int8 map where
it lies; ONNX Runtime's int8 ``AveragePool`` runs in NCHW (a transpose of the map first) and costs
about twice as much, and a float pool first dequantizes, transposes and reorders the whole map
(BENCHMARKS.md, "Int8"). The weights 0 and ``1/|bin|`` (all bins of one pool have the same size)
are exact in int8. The 1×1 pool stays a ``GlobalAveragePool``: ONNX Runtime runs its int8 form in
NHWC, faster than the matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import keep_batch_reshape

_END = torch.iinfo(torch.int64).max


def _halves(x: torch.Tensor, axis: int, n: int | None = None) -> torch.Tensor:
    """The two bins of ``axis`` (of size ``n``, default: read from ``x``) averaged: ``[0, ceil(n/2))``
    and ``[floor(n/2), n)``, stacked on ``axis``."""
    n = x.shape[axis] if n is None else n
    first = x.narrow(axis, 0, (n + 1) // 2).mean(axis, keepdim=True)
    second = x.narrow(axis, n // 2, n - n // 2).mean(axis, keepdim=True)
    return torch.cat([first, second], axis)


def _const(g, values: list[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _sums(g) -> bool:
    return g.opset >= 15


def _reduce(g, t, axes: list[int], keep: bool = True):
    """The sum of ``t`` over ``axes`` (the mean before opset 15, where the count cannot follow the map's type)."""
    if _sums(g):
        return g.op("ReduceSum", t, _const(g, axes), keepdims_i=int(keep))
    return g.op("ReduceMean", t, axes_i=axes, keepdims_i=int(keep))  # axes: an attribute until opset 18


def _divide_by_count(g, reduced, sizes, like):
    """Sums (B, N) divided by the product of the int64 ``sizes``, cast to the type of ``like``; means as they are.

    The sums are 2-D: ONNX Runtime divides a (B, N) tensor by a one-element one in a fast path
    but a (B, N, 1, 1) tensor about 25 times slower (its general broadcast, for the rank difference).
    """
    if not _sums(g):
        return reduced
    count = g.op("CastLike", g.op("ReduceProd", sizes, keepdims_i=1), like)
    return g.op("Div", reduced, count)


def _spatial_size(g, x):
    if g.opset >= 15:  # Shape's start and end attributes
        return g.op("Shape", x, start_i=2, end_i=4)
    return g.op("Slice", g.op("Shape", x), _const(g, [2]), _const(g, [4]))


def _halve(g, pair):
    if g.opset >= 18:  # Split's output count became an attribute
        return g.op("Split", pair, axis_i=0, num_outputs_i=2, outputs=2)
    return g.op("Split", pair, axis_i=0, outputs=2)


class _DynamicPool(torch.autograd.Function):
    """Adaptive average pool to 1×1 or 2×2 of a map of any size, flattened to (B, C·out²);
    exported as sums and one division."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out: int) -> torch.Tensor:
        if out == 1:
            return x.mean((2, 3))
        return _halves(_halves(x, 2), 3).flatten(1)

    @staticmethod
    def symbolic(g, x, out):
        hw = _spatial_size(g, x)
        if out == 1:
            return _divide_by_count(g, _reduce(g, x, [2, 3], keep=False), hw, x)
        ceil = g.op("Div", g.op("Add", hw, _const(g, [1])), _const(g, [2]))
        floor = g.op("Div", hw, _const(g, [2]))
        ends, starts = _halve(g, ceil), _halve(g, floor)  # (ceil_h,), (ceil_w,) and (floor_h,), (floor_w,)
        t = x
        for axis, end, start in zip((2, 3), ends, starts):
            first = g.op("Slice", t, _const(g, [0]), end, _const(g, [axis]))
            second = g.op("Slice", t, start, _const(g, [_END]), _const(g, [axis]))
            t = g.op("Concat", _reduce(g, first, [axis]), _reduce(g, second, [axis]), axis_i=axis)
        return _divide_by_count(g, g.op("Flatten", t, axis_i=1), ceil, x)


def _bins(n: int, out: int) -> list[tuple[int, int]]:
    """The [start, end) bins of adaptive average pooling of ``n`` cells to ``out`` (1 or 2)."""
    return [(0, n)] if out == 1 else [(0, (n + 1) // 2), (n // 2, n)]


def pooling_matrix(out: int, h: int, w: int) -> torch.Tensor:
    """(out², H·W) float32: row ``i·out + j`` averages bin (i, j) of an H×W map read row-major."""
    rows = []
    for r0, r1 in _bins(h, out):
        for c0, c1 in _bins(w, out):
            row = torch.zeros(h, w, dtype=torch.float64)
            row[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
            rows.append(row.flatten())
    return torch.stack(rows).float()


class ExactAdaptiveAvgPool(nn.Module):
    """Adaptive average pool to ``out``×``out`` (1 or 2), flattened channel-major to (B, C·out²).

    ``channels_last`` (with a known ``in_hw``): as a product with :func:`pooling_matrix` on the
    channels-last map (see the module docstring); with ``bin_major`` too, flattened bin-major
    (feature ``b·C + c``, no transpose: the consumer's weights are permuted to match).
    """

    def __init__(self, out: int, in_hw: tuple[int, int] | None, channels_last: bool = False, bin_major: bool = False):
        super().__init__()
        if out not in (1, 2):
            raise ValueError(f"output size {out} is not 1 or 2")
        self.out = out
        self.in_hw = in_hw  # None: dynamic input size
        self.channels_last = channels_last and in_hw is not None
        self.bin_major = self.channels_last and bin_major and out == 2  # one bin: both orders are the same
        if self.channels_last and out == 2:  # output 1 stays a GlobalAveragePool (see the module docstring)
            self.register_buffer("matrix", pooling_matrix(out, *in_hw), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_hw is None:
            return _DynamicPool.apply(x, self.out)
        if self.channels_last and self.out == 2:
            h, w = self.in_hw
            c = int(x.shape[1])
            pooled = torch.matmul(self.matrix, keep_batch_reshape(x.permute(0, 2, 3, 1), (h * w, c)))  # (B, out², C)
            if self.bin_major:
                return keep_batch_reshape(pooled, (4 * c,))
            return pooled.transpose(1, 2).flatten(1)
        if self.out == 1:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        h, w = self.in_hw
        if min(h, w) < 2:  # a 1-wide axis has one bin twice; constant slices (python ints)
            return _halves(_halves(x, 2, h), 3, w).flatten(1)
        pooled = F.avg_pool2d(x, kernel_size=(-(-h // 2), -(-w // 2)), stride=(h // 2, w // 2))
        return pooled.flatten(1)
