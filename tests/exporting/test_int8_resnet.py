"""Int8 exports of networks without depthwise convolutions (DCD ResNets): the channels-last lowering
whose attention pools and latent products read the int8 maps where ONNX Runtime keeps them (NHWC);
and int8 exports of the other families (valid graphs, Loops included)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SMALL_INPUT, build_calibrated
from family_nets import NETWORKS, SIZE, build

from dcd_deploy.exporting.loops import sort_nodes
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.quantize import Int8Check, check_inputs, cosine_per_sample, node_roles

DCD_LAYERS = 16  # resnet18_dcd: two conv_basic_dy per BasicBlock, eight blocks


@pytest.fixture(scope="module")
def resnet_exports(tmp_path_factory):
    model = build_calibrated("resnet18_dcd", input_size=SMALL_INPUT, num_classes=10)
    folder = tmp_path_factory.mktemp("int8_resnet")
    cal = np.random.default_rng(3).standard_normal((16, 3, SMALL_INPUT, SMALL_INPUT), dtype=np.float32)
    result = export(model, folder / "int8.onnx", input_size=SMALL_INPUT, int8=True, calibration=cal)
    export(model, folder / "float.onnx", input_size=SMALL_INPUT, form="factored", self_check=False)
    return result, onnx.load(folder / "int8.onnx"), onnx.load(folder / "float.onnx"), cal


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _constant_through_qdq(name: str, producer: dict[str, onnx.NodeProto]) -> bool:
    """Whether ``name`` is a constant quantized and dequantized (a ``Constant`` node, an initializer)."""
    steps = []
    node = producer.get(name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        steps.append(node.op_type)
        node = producer.get(node.input[0])
    return bool(steps) and (node is None or node.op_type == "Constant")


def test_resnet_int8_pools_are_quantized_pooling_matrix_products(resnet_exports):
    result, int8, float_graph, _ = resnet_exports
    assert isinstance(result.self_check, Int8Check) and result.self_check.passed
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta["dcd_deploy.precision"] == "int8"
    assert "pool" in json.loads(meta["dcd_deploy.int8"])["quantized_roles"]
    producer = _producers(int8)
    pools = [n for n in int8.graph.node if n.op_type == "MatMul" and _constant_through_qdq(n.input[0], producer)]
    assert len(pools) == DCD_LAYERS
    assert all(producer[n.input[1]].op_type == "DequantizeLinear" for n in pools)  # reads the int8 map
    # the float32 (portable) export of the same network keeps its pooling ops: no pooling-matrix products
    by_name = {n.name: n for n in float_graph.graph.node}
    assert not any(by_name[name].op_type == "MatMul" for name, role in node_roles(float_graph).items() if role == "pool")
    assert sum(n.op_type == "AveragePool" for n in float_graph.graph.node) == DCD_LAYERS


def test_resnet_int8_runs_its_pools_as_int8_matmuls_on_onnx_runtime(resnet_exports, tmp_path):
    _, int8, _, _ = resnet_exports
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(int8.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph.node]
    assert ops.count("QLinearMatMul") == DCD_LAYERS
    assert "AveragePool" not in ops and "ReorderInput" not in ops  # no float pool of a dequantized, reordered map


def test_resnet_int8_follows_the_float32_graph(resnet_exports):
    _, int8, float_graph, cal = resnet_exports
    x = check_inputs(cal, count=16)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    cos = cosine_per_sample(run(int8), run(float_graph))
    assert cos.mean() >= 0.98 and cos.min() >= 0.9, cos


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_int8_export_of_every_family_is_valid_and_checked(family, tmp_path):
    """ODConv's per-sample convolutions are Loops whose bodies read tensors of the main graph; the
    quantizer once placed a Loop before such a tensor's producer (the checker refused the file)."""
    model = build(family)
    cal = np.random.default_rng(5).standard_normal((16, 3, SIZE, SIZE), dtype=np.float32)
    result = export(model, tmp_path / "int8.onnx", input_size=SIZE, int8=True, calibration=cal)
    onnx.checker.check_model(onnx.load(tmp_path / "int8.onnx"), full_check=True)
    assert isinstance(result.self_check, Int8Check) and result.self_check.passed, result.self_check.summary()


def test_sort_nodes_puts_a_loop_after_what_its_body_reads():
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "outer"], ["acc_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1])])
    loop = helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)
    outer = helper.make_node("Neg", ["x"], ["outer"])  # produced AFTER the Loop that reads it
    graph = helper.make_graph([loop, outer], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("n", TensorProto.INT64, [], [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    sort_nodes(model.graph)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Neg", "Loop"]
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([2.0], np.float32)})[0]
    assert out.tolist() == [2.0 - 3 * 2.0]
