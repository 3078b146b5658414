"""Shape-preserving building blocks of the lowered modules, for graphs that keep their symbols.

A Reshape to ``(-1, …)`` or to a shape computed from ``Shape``/``Gather``/``Concat`` leaves ONNX
shape inference with anonymous dimensions: after the first dynamic layer the graph would no longer
say that dimension 0 is the batch, and runtimes that solve symbolic shapes (tract, TensorRT
profiles, OpenVINO's reshape) get a chain of arithmetic to analyse. The helpers here emit either
a constant-shape Reshape that copies the batch dimension (``0`` in the shape, ONNX's default
``allowzero=0`` semantics) or no reshape at all.
"""

from __future__ import annotations

import torch


class _KeepBatchReshape(torch.autograd.Function):
    """``t.reshape(t.shape[0], *dims)``, exported as one Reshape with a constant shape starting with 0."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return t.reshape(t.shape[0], *dims).clone()  # not a view: the network may modify it in place

    @staticmethod
    def symbolic(g, t, dims):
        # torch.onnx's own shape inference rejects a 0 without a -1, so the first of ``dims`` is
        # written as -1 when none is (the same shape: the other dims are known); ONNX infers it
        shape = [0, *dims] if -1 in dims else [0, -1, *dims[1:]]
        return g.op("Reshape", t, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64)))


def keep_batch_reshape(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Reshape ``t`` to ``(batch, *dims)``, keeping its batch dimension (one -1 allowed in ``dims``).

    A plain reshape in eager mode; while torch.onnx exports, one Reshape with a constant shape starting with ``0``.
    """
    if torch.onnx.is_in_onnx_export():
        return _KeepBatchReshape.apply(t, tuple(dims))
    return t.reshape(t.shape[0], *dims)


def channel_matmul(k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``out[b, o, h, w] = Σ_c k[b, o, c] · t[b, c, h, w]`` for any H, W, with no shape arithmetic.

    Swaps the channel and row axes so one broadcast MatMul ((B, 1, O, C) × (B, H, C, W)) does the
    work: two Transposes and no Shape or Reshape, for the dynamic-size graph.
    """
    return torch.matmul(k.unsqueeze(1), t.transpose(1, 2)).transpose(1, 2)
