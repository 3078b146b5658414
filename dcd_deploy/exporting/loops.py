"""Per-sample convolutions as standard ONNX: one ``Loop`` over the batch per ``PerSampleConv`` node.

The ``loop`` form of a dynamic convolution exports as one custom node (domain ``dcd_deploy``, op
``PerSampleConv``, inputs x (N, C_in, H, W), weight (N, C_out, C_in/g, k, k) and optionally a bias,
(N, C_out) per sample when ``per_sample_bias`` is 1, else (C_out,); attributes ``strides``, ``pads``,
``dilations``, ``group``). :func:`expand_per_sample_convs` replaces each one by::

    trip = Gather(Shape(x), 0)                       # the batch, read at run time
    y    = Loop(trip, "") with body(i, cond):
               xi = Unsqueeze(Gather(x, i), [0])     # sample i as a batch of one
               yi = Conv(xi, Gather(weight, i), Gather(bias, i) | bias, strides, pads, dilations, group)
               scan output: Squeeze(yi, [0])         # stacked over i: (N, C_out, H', W')

so the file holds only standard operators, with nothing that depends on the batch size. When the
weight is a mix of experts and nothing else, ``Reshape(MatMul(routing, bank))`` with a constant bank
(DyConv, CondConv), the body forms its sample's kernel itself, ``Reshape(MatMul(routing[i], bank))``,
instead of gathering it from a batch of kernels: the (N, C_out, C_in/g, k, k) tensor is then never
written and copied (at batch 8 on a DyConv ResNet-18 that copy was a sixth of the run). Such a
``Conv`` is the only one whose weight is computed at run time, and only inside such a Loop's body
(graph rule :func:`dcd_deploy.exporting.graphcheck.conv_weights_are_constant` reads top-level nodes).
The expansion must run on the exporter's output, before any other tool (onnxsim, shape inference,
float16 conversion) reads the graph: none of them knows the custom node.

A Loop's body reads tensors of the main graph by name (the sample's input map, the mixing weights),
which ONNX requires to be defined before the Loop node. Tools that sort a graph by explicit inputs
only (``onnxruntime.quantization`` does) can break that; :func:`sort_nodes` restores the order.
"""

from __future__ import annotations

import heapq

import onnx
from onnx import TensorProto, helper, numpy_helper

from ..lowering.dynamic_forms import PER_SAMPLE_DOMAIN, PER_SAMPLE_OP

MIN_OPSET = 13  # Squeeze/Unsqueeze take their axes as an input


def is_per_sample_conv(node: onnx.NodeProto) -> bool:
    return node.domain == PER_SAMPLE_DOMAIN and node.op_type == PER_SAMPLE_OP


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of value ``name`` where the graph declares it (float32 otherwise)."""
    g = model.graph
    for value in (*g.input, *g.value_info, *g.output):
        if value.name == name and value.type.tensor_type.elem_type:
            return value.type.tensor_type.elem_type
    for init in g.initializer:
        if init.name == name:
            return init.data_type
    return TensorProto.FLOAT


def _constant(model: onnx.ModelProto, name: str) -> list[int] | None:
    """The integer values of ``name`` when an initializer or a Constant node holds it."""
    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).ravel()]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute and node.attribute[0].name == "value":
            return [int(v) for v in numpy_helper.to_array(node.attribute[0].t).ravel()]
    return None


def _expert_mix(model: onnx.ModelProto, weight: str) -> tuple[str, str, list[int]] | None:
    """(routing, bank, kernel dims) when ``weight`` is ``Reshape(...Reshape(MatMul(routing, bank)))`` with a
    constant 2-D ``bank`` and constant shapes; else None."""
    producers = {o: node for node in model.graph.node for o in node.output}
    banks = {i.name: i for i in model.graph.initializer}
    node, dims = producers.get(weight), None
    while node is not None and node.op_type == "Reshape":
        shape = _constant(model, node.input[1])
        if shape is None:
            return None
        dims = dims or shape[1:]
        node = producers.get(node.input[0])
    if node is None or node.op_type != "MatMul" or dims is None or node.input[1] not in banks:
        return None
    if len(banks[node.input[1]].dims) != 2 or any(d <= 0 for d in dims):
        return None
    return node.input[0], node.input[1], dims


def _sample_weight(model: onnx.ModelProto, w: str, n) -> list[onnx.NodeProto]:
    """Nodes that put sample i's kernel in ``n("w_i")``: formed from the experts when possible."""
    mix = _expert_mix(model, w)
    if mix is None:
        return [helper.make_node("Gather", [w, n("i")], [n("w_i")], axis=0)]
    routing, bank, dims = mix
    shape = helper.make_tensor(n("kernel_shape_value"), TensorProto.INT64, [len(dims)], dims)
    return [
        helper.make_node("Gather", [routing, n("i")], [n("r_i")], axis=0),
        helper.make_node("Unsqueeze", [n("r_i"), n("axes")], [n("r_1")]),
        helper.make_node("MatMul", [n("r_1"), bank], [n("w_flat")]),
        helper.make_node("Constant", [], [n("kernel_shape")], value=shape),
        helper.make_node("Reshape", [n("w_flat"), n("kernel_shape")], [n("w_i")]),
    ]


def _body(model: onnx.ModelProto, node: onnx.NodeProto, prefix: str, elem_type: int) -> onnx.GraphProto:
    """The Loop body computing sample i of one PerSampleConv node."""
    x, w = node.input[0], node.input[1]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    n = lambda name: f"{prefix}/{name}"
    nodes = [
        helper.make_node("Constant", [], [n("axes")], value=helper.make_tensor(n("axes_value"), TensorProto.INT64, [1], [0])),
        helper.make_node("Gather", [x, n("i")], [n("x_i")], axis=0),
        helper.make_node("Unsqueeze", [n("x_i"), n("axes")], [n("x_1")]),
        *_sample_weight(model, w, n),
    ]
    conv_inputs = [n("x_1"), n("w_i")]
    if len(node.input) > 2 and node.input[2]:
        if attrs.get("per_sample_bias", 0):
            nodes.append(helper.make_node("Gather", [node.input[2], n("i")], [n("b_i")], axis=0))
            conv_inputs.append(n("b_i"))
        else:
            conv_inputs.append(node.input[2])
    nodes += [
        helper.make_node("Conv", conv_inputs, [n("y_1")], strides=attrs["strides"], pads=attrs["pads"],
                         dilations=attrs["dilations"], group=attrs["group"]),
        helper.make_node("Squeeze", [n("y_1"), n("axes")], [n("y_i")]),
        helper.make_node("Identity", [n("cond")], [n("cond_out")]),
    ]
    return helper.make_graph(
        nodes, n("body"),
        [helper.make_tensor_value_info(n("i"), TensorProto.INT64, []),
         helper.make_tensor_value_info(n("cond"), TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(n("cond_out"), TensorProto.BOOL, []),
         helper.make_tensor_value_info(n("y_i"), elem_type, [None, None, None])],
    )


def _loop_nodes(model: onnx.ModelProto, node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    prefix = f"per_sample_conv_{index}"
    x = node.input[0]
    zero = helper.make_tensor(f"{prefix}/zero_value", TensorProto.INT64, [], [0])
    return [
        helper.make_node("Shape", [x], [f"{prefix}/shape"], name=f"{prefix}/Shape"),
        helper.make_node("Constant", [], [f"{prefix}/zero"], value=zero, name=f"{prefix}/Zero"),
        helper.make_node("Gather", [f"{prefix}/shape", f"{prefix}/zero"], [f"{prefix}/batch"], axis=0,
                         name=f"{prefix}/Batch"),
        helper.make_node("Loop", [f"{prefix}/batch", ""], [node.output[0]], name=f"{prefix}/Loop",
                         body=_body(model, node, prefix, _elem_type(model, x))),
    ]


def expand_per_sample_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``PerSampleConv`` node replaced by a standard ONNX Loop (the
    model itself when it has none). Raises ValueError below opset 13."""
    if not any(is_per_sample_conv(node) for node in model.graph.node):
        return model
    if _opset(model) < MIN_OPSET:
        raise ValueError(f"per-sample convolutions need opset {MIN_OPSET} or later (the model has {_opset(model)})")
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if is_per_sample_conv(node):
            nodes += _loop_nodes(model, node, count)
            count += 1
        else:
            nodes.append(node)
    del expanded.graph.node[:]
    expanded.graph.node.extend(_without_dead_nodes(nodes, [o.name for o in model.graph.output]))
    kept = [o for o in expanded.opset_import if o.domain != PER_SAMPLE_DOMAIN]
    del expanded.opset_import[:]
    expanded.opset_import.extend(kept)
    return expanded


def _inputs_of(node: onnx.NodeProto) -> set[str]:
    """Every value ``node`` reads, also from inside its subgraphs (a Loop body reads outer names)."""
    names = set(node.input)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for inner in attr.g.node:
                names |= _inputs_of(inner)
    return names


def _without_dead_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those whose outputs nothing reads (the batch of kernels a Loop no longer gathers)."""
    live = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live |= _inputs_of(node)
    return kept[::-1]


def count_loops(model: onnx.ModelProto) -> int:
    """How many per-sample Loops :func:`expand_per_sample_convs` left in ``model``."""
    return sum(1 for node in model.graph.node if node.op_type == "Loop" and node.name.startswith("per_sample_conv_"))


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from its enclosing scopes: used by its nodes but defined nowhere in it."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(node.output)
        used.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _outer_names(sub)
    return used - defined


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes topologically, in place, counting the tensors a ``Loop``/``If`` body
    reads from outside as inputs of that node (ONNX's checker requires them defined before it);
    ties keep the original order. ``onnxruntime.quantization`` sorts by explicit inputs only."""
    nodes = list(graph.node)
    needs = []
    for node in nodes:
        inner = set()
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                inner |= _outer_names(sub)
        needs.append({i for i in node.input if i} | inner)
    producer = {o: k for k, node in enumerate(nodes) for o in node.output}
    waiting = [sum(1 for name in need if name in producer) for need in needs]
    users: dict[int, list[int]] = {}
    for k, need in enumerate(needs):
        for name in need:
            if name in producer:
                users.setdefault(producer[name], []).append(k)
    ready = [k for k, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for user in users.get(k, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):  # a cycle: leave the graph as it is for the checker to report
        return
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)
