"""Structural properties every exported graph must have (checked after each export).

No Conv takes a computed weight (an int8 file's dequantized constant weights count as constant),
with one exception: a batch-specific file (metadata
``dcd_deploy.batch_specific=true``, written only by fixed-batch exports that use the static-batch
``grouped`` form of ``lowering/grouped.py``) may hold that form's convolutions, recognised by
their scope name.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import onnx

from ..lowering.grouped import CONV_SCOPE
from ..lowering.grouped import FORM as GROUPED_FORM

BATCH_SPECIFIC_KEY = "dcd_deploy.batch_specific"
_SCOPE = re.compile(rf"/{CONV_SCOPE}(_\d+)?/")  # torch.onnx numbers repeated scope names


def batch_specific_metadata(report: Any, batch: int | None) -> dict[str, str]:
    """``dcd_deploy.batch_specific`` (and ``dcd_deploy.batch``) for a rewrite ``report``: true when a
    layer was lowered to the static-batch form, so the file runs at batch ``batch`` only."""
    specific = batch is not None and any(layer.form == GROUPED_FORM for layer in report.lowered)
    meta = {BATCH_SPECIFIC_KEY: str(specific).lower()}
    return {**meta, "dcd_deploy.batch": str(batch)} if batch is not None else meta


def conv_weights_are_constant(model: onnx.ModelProto) -> list[str]:
    """Names of Conv nodes whose weight (or bias) is computed rather than an initializer (except the
    static-batch form's convolutions in a file marked batch-specific). In an int8 (QDQ) graph a
    ``DequantizeLinear`` of constants (the int8 weight, its scales and zero points) is constant too;
    any other computation on the way to the weight is not."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:  # topological order: a DequantizeLinear's inputs are known before it
        if node.op_type == "DequantizeLinear" and all(not name or name in consts for name in node.input):
            consts.update(node.output)
    specific = any(p.key == BATCH_SPECIFIC_KEY and p.value == "true" for p in model.metadata_props)
    bad = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and any(name and name not in consts for name in node.input[1:]):
            if not (specific and node.op_type == "Conv" and _SCOPE.search(node.name)):
                bad.append(node.name or node.output[0])
    return bad


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def batch_independent(model: onnx.ModelProto, batch: int | None) -> list[str]:
    """Reshape targets that hard-code a batch size in a dynamic-batch graph (should be -1, or a leading
    1 with the batch folded into a -1 after it)."""
    if batch is not None:
        return []
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
            # (1, -1, ...) folds the batch into the next axis (the batch-folded convolution's input):
            # batch-independent too
            folded = shape.size > 1 and shape[0] == 1 and -1 in shape[1:].tolist()
            if shape.size and shape[0] not in (-1, 0) and not folded:
                bad.append(f"{node.name or node.output[0]} reshapes to {shape.tolist()}")
    return bad
