"""The generic family's ``folded`` form in the file: one graph for every batch, the user's own convolution.

The folded call ``conv(x (1, N·C_in, ...), w (N·C_out, C_in/g, ...), b (N·C_out,), groups=N·g)`` is
exported as one custom node (domain ``dcd_deploy``, op ``FoldedConv``, attributes ``c_in``,
``c_out``, ``group`` = g, ``kernel_shape``, ``strides``, ``pads``, ``dilations``), which
:func:`expand_folded_convs` replaces by standard ONNX::

    n = Gather(Shape(x), 1) / c_in                     # the batch, read at run time
    y = If(n == 1, Conv(x, w, b, group=1·g),
           If(n == 2, Conv(x, w, b, group=2·g),
              ... If(n == LADDER, Conv(x, w, b, group=LADDER·g),
                     Loop over the samples (the loop form)) ...))

Each branch is the very convolution the user's code runs (and the plain static-batch export holds)
at that batch, so up to :data:`LADDER` samples the file runs what the plain export of that batch
runs, and beyond it one Conv per sample. The branches hold no weights (the kernel is computed), so
the ladder costs the file nothing. conv1d runs as conv2d of height 1 (its padding in ``pads``).

OpenVINO (2026.4 CPU plugin) computes these Ifs wrongly the first time it sees a batch size (right
from the second run on): files for OpenVINO take the ``loop`` or ``unfold`` form (``--form``).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..lowering.dynamic_forms import PER_SAMPLE_DOMAIN, PER_SAMPLE_OP
from ..lowering.families._folded_graph import FOLDED_OP
from .loops import _loop_nodes

LADDER = 8  # batches 1..LADDER run the folded Conv itself; larger ones the per-sample Loop


def is_folded_conv(node: onnx.NodeProto) -> bool:
    return node.domain == PER_SAMPLE_DOMAIN and node.op_type == FOLDED_OP


def _const(name: str, values: list[int], scalar: bool = False) -> onnx.NodeProto:
    tensor = helper.make_tensor(f"{name}_value", TensorProto.INT64, [] if scalar else [len(values)], values)
    return helper.make_node("Constant", [], [name], value=tensor, name=name)


def _loop_branch(model: onnx.ModelProto, node: onnx.NodeProto, prefix: str, attrs: dict, out: str) -> onnx.GraphProto:
    """The else-branch beyond the ladder: the samples unfolded from the channels, one Conv each."""
    x, w = node.input[0], node.input[1]
    b = node.input[2] if len(node.input) > 2 and node.input[2] else None
    kh, kw = attrs["kernel_shape"]
    p = lambda name: f"{prefix}/loop/{name}"
    nodes = [_const(p("x_shape"), [-1, attrs["c_in"], 0, 0]), helper.make_node("Reshape", [x, p("x_shape")], [p("xs")]),
             _const(p("w_shape"), [-1, attrs["c_out"], attrs["c_in"] // attrs["group"], kh, kw]),
             helper.make_node("Reshape", [w, p("w_shape")], [p("ws")])]
    inputs = [p("xs"), p("ws")]
    if b is not None:
        nodes += [_const(p("b_shape"), [-1, attrs["c_out"]]), helper.make_node("Reshape", [b, p("b_shape")], [p("bs")])]
        inputs.append(p("bs"))
    per_sample = helper.make_node(PER_SAMPLE_OP, inputs, [p("ys")], domain=PER_SAMPLE_DOMAIN, strides=attrs["strides"],
                                  pads=attrs["pads"], dilations=attrs["dilations"], group=attrs["group"],
                                  per_sample_bias=int(b is not None))
    nodes += _loop_nodes(model, per_sample, f"{prefix.replace('/', '_')}_loop")
    nodes += [_const(p("y_shape"), [1, -1, 0, 0]), helper.make_node("Reshape", [p("ys"), p("y_shape")], [out])]
    return helper.make_graph(nodes, p("graph"), [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def _static_conv(node: onnx.NodeProto, attrs: dict, n: int, p: str) -> list[onnx.NodeProto]:
    """Reshapes giving the branch for batch ``n`` static channel counts (OpenVINO compiles no grouped
    convolution whose weight shape is dynamic): ``p/x``, ``p/w`` (and ``p/b``)."""
    kh, kw = attrs["kernel_shape"]
    shapes = {"x": [1, n * attrs["c_in"], 0, 0], "w": [n * attrs["c_out"], attrs["c_in"] // attrs["group"], kh, kw],
              "b": [n * attrs["c_out"]]}
    nodes = []
    for name, value in zip("xwb", node.input):
        nodes += [_const(f"{p}/{name}_shape", shapes[name]),
                  helper.make_node("Reshape", [value, f"{p}/{name}_shape"], [f"{p}/{name}"])]
    return nodes


def _ladder(model: onnx.ModelProto, node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    prefix = f"folded_conv_{index}"
    x = node.input[0]
    nodes = [helper.make_node("Shape", [x], [f"{prefix}/shape"], name=f"{prefix}/Shape"),
             _const(f"{prefix}/one", [1], scalar=True),
             helper.make_node("Gather", [f"{prefix}/shape", f"{prefix}/one"], [f"{prefix}/channels"], axis=0),
             _const(f"{prefix}/c_in", [attrs["c_in"]], scalar=True),
             helper.make_node("Div", [f"{prefix}/channels", f"{prefix}/c_in"], [f"{prefix}/batch"], name=f"{prefix}/Batch")]
    conv_attrs = {"strides": attrs["strides"], "pads": attrs["pads"], "dilations": attrs["dilations"]}
    branch = _loop_branch(model, node, prefix, attrs, f"{prefix}/loop/y")
    for n in range(LADDER, 0, -1):
        out = node.output[0] if n == 1 else f"{prefix}/n{n}/y"
        then = helper.make_graph(
            _static_conv(node, attrs, n, f"{prefix}/n{n}") +
            [helper.make_node("Conv", [f"{prefix}/n{n}/{v}" for v in "xwb"[:len(node.input)]], [f"{prefix}/n{n}/conv"],
                              group=n * attrs["group"], name=f"{prefix}/n{n}/Conv", **conv_attrs)],
            f"{prefix}/n{n}/then", [], [helper.make_tensor_value_info(f"{prefix}/n{n}/conv", TensorProto.FLOAT, None)])
        test = [_const(f"{prefix}/n{n}/k", [n], scalar=True),
                helper.make_node("Equal", [f"{prefix}/batch", f"{prefix}/n{n}/k"], [f"{prefix}/n{n}/is"])]
        if_node = helper.make_node("If", [f"{prefix}/n{n}/is"], [out], then_branch=then, else_branch=branch,
                                   name=f"{prefix}/n{n}/If")
        if n == 1:
            return nodes + test + [if_node]
        branch = helper.make_graph(test + [if_node], f"{prefix}/n{n}/else", [],
                                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    raise AssertionError("unreachable")


def expand_folded_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``FoldedConv`` node replaced by its batch ladder (the model
    itself when it has none)."""
    if not any(is_folded_conv(node) for node in model.graph.node):
        return model
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if is_folded_conv(node):
            nodes += _ladder(model, node, count)
            count += 1
        else:
            nodes.append(node)
    del expanded.graph.node[:]
    expanded.graph.node.extend(nodes)
    if not any(n.domain == PER_SAMPLE_DOMAIN for n in nodes):
        kept = [o for o in expanded.opset_import if o.domain != PER_SAMPLE_DOMAIN]
        del expanded.opset_import[:]
        expanded.opset_import.extend(kept)
    return expanded
