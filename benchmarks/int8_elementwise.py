"""What the per-sample channel scale of an int8 DCD layer costs on ONNX Runtime's CPU provider.

An int8 DCD layer multiplies its W0 output (uint8, NHWC inside ONNX Runtime) by the per-sample,
per-channel scale. One QDQ graph per variant, each a single multiply of a uint8 map:

* ``QLinearMul NHWC broadcast``: (N, H, W, C) × (N, 1, 1, C), the layout the int8 layers run in;
* ``QLinearMul NCHW broadcast``: (N, C, H, W) × (N, C, 1, 1);
* ``QLinearMul same shape``: (N, H, W, C) × (N, H, W, C), no broadcast;
* ``float DQ + Mul + Q``: the NHWC broadcast left unfused (optimizations off), dequantize, float
  multiply, quantize.

ONNX Runtime fuses the first three into ``QLinearMul``. Interleaved rounds, median per variant.

    python benchmarks/int8_elementwise.py                       # 1×56×56×256 (resnet50_dcd stage 1)
    python benchmarks/int8_elementwise.py --shape 8,56,56,256
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def scale_graph(x_shape: list[int], s_shape: list[int]) -> bytes:
    """DequantizeLinear(x), DequantizeLinear(s) -> Mul -> QuantizeLinear, uint8 in and out."""
    consts = {"x_scale": np.float32(0.05), "x_zero": np.uint8(128), "s_scale": np.float32(0.01),
              "s_zero": np.uint8(0), "y_scale": np.float32(0.05)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero"], ["xf"]),
             helper.make_node("DequantizeLinear", ["s", "s_scale", "s_zero"], ["sf"]),
             helper.make_node("Mul", ["xf", "sf"], ["yf"]),
             helper.make_node("QuantizeLinear", ["yf", "y_scale", "x_zero"], ["y"])]
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape),
                                               helper.make_tensor_value_info("s", TensorProto.UINT8, s_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, x_shape)],
                              [numpy_helper.from_array(np.array(v), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def session(model: bytes, threads: int, fused: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1,56,56,256", help="N,H,W,C of the map")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args(argv)
    n, h, w, c = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
    x_nhwc, x_nchw = u8(n, h, w, c), u8(n, c, h, w)
    variants = {
        "QLinearMul NHWC broadcast": (scale_graph([n, h, w, c], [n, 1, 1, c]), {"x": x_nhwc, "s": u8(n, 1, 1, c)}, True),
        "QLinearMul NCHW broadcast": (scale_graph([n, c, h, w], [n, c, 1, 1]), {"x": x_nchw, "s": u8(n, c, 1, 1)}, True),
        "QLinearMul same shape": (scale_graph([n, h, w, c], [n, h, w, c]), {"x": x_nhwc, "s": u8(n, h, w, c)}, True),
        "float DQ + Mul + Q": (scale_graph([n, h, w, c], [n, 1, 1, c]), {"x": x_nhwc, "s": u8(n, 1, 1, c)}, False),
    }
    sessions = {name: (session(model, args.threads, fused), feeds) for name, (model, feeds, fused) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(args.runs + 10):
        for name, (sess, feeds) in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            if round_ >= 10:  # warm-up rounds are not kept
                times[name].append(time.perf_counter() - start)
    print(f"ONNX Runtime {ort.__version__} CPU, {args.threads} threads, spinning off, map {n}×{h}×{w}×{c} "
          f"({n * h * w * c:,} elements), median of {args.runs} interleaved rounds")
    base = float(np.median(times["QLinearMul same shape"]))
    print("| variant | µs | vs same shape |\n|---|---|---|")
    for name, t in times.items():
        median = float(np.median(t))
        print(f"| {name} | {median * 1e6:.0f} | {median / base:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
