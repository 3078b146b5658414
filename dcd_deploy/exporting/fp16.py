"""Float16 export: float16 weights and compute, float32 input and output.

Before the conversion every ``Gemm`` becomes ``MatMul`` (+ ``Add`` for its bias): the same
arithmetic, ``Y = alpha·A'·B' + beta·C`` with ``A' = Aᵀ if transA``, ``B' = Bᵀ if transB``, where
a constant ``B`` is transposed and scaled once at export and a constant ``C`` scaled once. Some
runtimes mishandle a float16 ``Gemm`` with a bias (tract); ``MatMul`` and ``Add`` are supported
everywhere, and ONNX Runtime fuses them back into one kernel: on the bundled sample model its
float16 outputs are identical bit for bit and its CPU latency the same at batch 1 and 8.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float16 weights and compute, float32 inputs and outputs (onnxconverter-common), Gemm as MatMul + Add."""
    from onnxconverter_common import float16

    model = gemm_to_matmul(model)
    with warnings.catch_warnings():  # one warning per weight below float16's smallest normal: noise
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


class _Rewriter:
    """Replaces Gemm nodes of one graph, keeping the node order and the names of every output."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {init.name: init for init in self.graph.initializer}
        self.names = {name for node in self.graph.node for name in (*node.input, *node.output)} | set(self.inits)
        self.new_inits: list[onnx.TensorProto] = []
        self.folded: set[str] = set()  # constants replaced by a transposed or scaled copy

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def operand(self, name: str, transpose: bool, scale: float, label: str, nodes: list[onnx.NodeProto]) -> str:
        """``name`` transposed and scaled as asked: folded into a new constant when it is one, else by nodes."""
        if name in self.inits:
            if not transpose and scale == 1.0:
                return name
            self.folded.add(name)
            value = numpy_helper.to_array(self.inits[name])
            value = (value.T if transpose else value) * np.asarray(scale, dtype=value.dtype)
            return self.constant(f"{name}_{label}", np.ascontiguousarray(value))
        if transpose:
            out = self.fresh(f"{name}_T")
            nodes.append(helper.make_node("Transpose", [name], [out], perm=[1, 0], name=self.fresh(f"{label}_transpose")))
            name = out
        if scale != 1.0:
            factor = self.constant(f"{label}_scale", np.asarray(scale, dtype=np.float32))
            out = self.fresh(f"{name}_scaled")
            nodes.append(helper.make_node("Mul", [name, factor], [out], name=self.fresh(f"{label}_scale")))
            name = out
        return name

    def replace(self, gemm: onnx.NodeProto) -> list[onnx.NodeProto]:
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        label = gemm.name or gemm.output[0]
        nodes: list[onnx.NodeProto] = []
        a = self.operand(gemm.input[0], bool(attrs.get("transA", 0)), 1.0, f"{label}_A", nodes)
        b = self.operand(gemm.input[1], bool(attrs.get("transB", 0)), float(attrs.get("alpha", 1.0)), f"{label}_B", nodes)
        has_bias = len(gemm.input) > 2 and gemm.input[2] != ""
        product = self.fresh(f"{label}_matmul") if has_bias else gemm.output[0]
        nodes.append(helper.make_node("MatMul", [a, b], [product], name=self.fresh(f"{label}_matmul")))
        if has_bias:
            c = self.operand(gemm.input[2], False, float(attrs.get("beta", 1.0)), f"{label}_C", nodes)
            nodes.append(helper.make_node("Add", [product, c], [gemm.output[0]], name=self.fresh(f"{label}_bias")))
        return nodes


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose top-level ``Gemm`` nodes are ``MatMul`` (+ ``Add``); see the module docstring."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    rewriter = _Rewriter(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.extend(rewriter.replace(node) if node.op_type == "Gemm" and node.domain in ("", "ai.onnx") else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(rewriter.new_inits)
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used or init.name not in rewriter.folded]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
