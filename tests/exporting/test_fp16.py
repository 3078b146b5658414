"""Float16 export: Gemm becomes MatMul (+ Add) with the same arithmetic, then float16 compute."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dcd_deploy.exporting.fp16 import gemm_to_matmul, to_fp16

M, K, N = 4, 5, 6


def gemm_model(trans_a: int, trans_b: int, alpha: float, beta: float, b_constant: bool, bias: bool):
    """A one-Gemm graph and its feeds; B (and C) are initializers or inputs."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    c = rng.standard_normal((N,)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))]
    inits = [numpy_helper.from_array(c, "c")] if bias else []
    feeds = {"a": a}
    if b_constant:
        inits.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b.shape)))
        feeds["b"] = b
    node = helper.make_node("Gemm", ["a", "b", "c"] if bias else ["a", "b"], ["y"], transA=trans_a, transB=trans_b,
                            alpha=alpha, beta=beta)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # float64 reference of Gemm's definition
    a64, b64 = (a.T if trans_a else a).astype(np.float64), (b.T if trans_b else b).astype(np.float64)
    ref = alpha * a64 @ b64 + (beta * c.astype(np.float64) if bias else 0.0)
    return model, feeds, ref


@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "beta", "b_constant", "bias"), [
    (0, 1, 1.0, 1.0, True, True),   # torch's Linear
    (1, 0, 0.5, 2.0, True, True),
    (0, 1, 1.0, 1.0, False, True),
    (1, 1, 2.0, 0.5, False, True),
    (0, 0, 1.0, 1.0, True, False),
])
def test_gemm_becomes_matmul_and_add_with_the_same_result(trans_a, trans_b, alpha, beta, b_constant, bias):
    model, feeds, ref = gemm_model(trans_a, trans_b, alpha, beta, b_constant, bias)
    rewritten = gemm_to_matmul(model)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Gemm" not in ops and "MatMul" in ops and ("Add" in ops) == bias
    assert [n.op_type for n in model.graph.node] == ["Gemm"]  # the input graph is left alone
    out = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    gemm = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    # each float32 result against the float64 definition: a few roundings of |values| ~ K
    bound = 8 * np.finfo(np.float32).eps * (np.abs(ref).max() + K)
    assert np.abs(out - ref).max() <= bound and np.abs(gemm - ref).max() <= bound
    if b_constant:  # the folded copy replaced the original constant, which nothing reads any more
        assert ("b" in {i.name for i in rewritten.graph.initializer}) == (not trans_b and alpha == 1.0)


def test_to_fp16_has_no_gemm_and_keeps_float32_io():
    model, feeds, ref = gemm_model(0, 1, 1.0, 1.0, True, True)
    half = to_fp16(model)
    assert "Gemm" not in {n.op_type for n in half.graph.node}
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(init.data_type == TensorProto.FLOAT16 for init in half.graph.initializer)
    out = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert out.dtype == np.float32
    # float16 rounds inputs, weights and the result: ~2^-11 relative each, summed over K products
    assert np.abs(out - ref).max() <= 4 * K * 2.0**-11 * np.abs(ref).max()
