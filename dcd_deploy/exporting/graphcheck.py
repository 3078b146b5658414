"""Structural properties every exported graph must have (checked after each export)."""

from __future__ import annotations

import collections

import onnx


def conv_weights_are_constant(model: onnx.ModelProto) -> list[str]:
    """Names of Conv nodes whose weight (or bias) is computed rather than an initializer."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and any(name and name not in consts for name in node.input[1:]):
            bad.append(node.name or node.output[0])
    return bad


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def batch_independent(model: onnx.ModelProto, batch: int | None) -> list[str]:
    """Reshape targets that hard-code a batch size in a dynamic-batch graph (should be -1)."""
    if batch is not None:
        return []
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
            if shape.size and shape[0] not in (-1, 0):
                bad.append(f"{node.name or node.output[0]} reshapes to {shape.tolist()}")
    return bad
