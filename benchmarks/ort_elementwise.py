"""What one extra node and one extra elementwise pass cost on ONNX Runtime's CPU provider.

Two facts behind the static-twin gap (BENCHMARKS.md), measured on chains of identical
nodes so that per-node time = chain time / chain length:

1. the fixed cost of a node: a chain of tiny (1×16) Add nodes;
2. one elementwise pass over a feature map (Relu, Clip, same-shape Add, broadcast Mul and Add by a
   per-channel N×C×1×1 vector) at 1 and 2 intra-op threads, spinning off and on. With spinning off
   (how the benchmarks run) these passes get no help from the second thread, while convolutions do.

    python benchmarks/ort_elementwise.py                  # 256×56×56 (a ResNet stage-1 map)
    python benchmarks/ort_elementwise.py --shape 1,96,112,112
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from dcd_deploy.runtime.session import create_session


def chain(op: str, shape: list[int], length: int) -> bytes:
    """A graph applying ``op`` ``length`` times in sequence to an input of ``shape``."""
    c = shape[1]
    inits = {
        "Relu": [],
        "Clip": [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")],
        "Add": [numpy_helper.from_array(np.full(shape, 1e-3, np.float32), "k")],
        "Mul (per channel)": [numpy_helper.from_array(np.ones((1, c, 1, 1), np.float32), "k")],
        "Add (per channel)": [numpy_helper.from_array(np.full((1, c, 1, 1), 1e-3, np.float32), "k")],
    }[op]
    onnx_op = op.split(" ")[0]
    extra = {"Relu": [], "Clip": ["lo", "hi"]}.get(op, ["k"])
    nodes, prev = [], "x"
    for i in range(length):
        nodes.append(helper.make_node(onnx_op, [prev, *extra], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def per_node_us(model: bytes, shape: list[int], length: int, configs: list[tuple[int, bool]], rounds: int) -> list[float]:
    """Median µs per node of each (threads, spinning) config, sessions interleaved in blocks of 5 runs."""
    sessions = [create_session(model, "cpu", threads=t, spinning=s) for t, s in configs]
    x = {"x": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            session.run(None, x)  # untimed: lets another session's spinning threads go idle
            for _ in range(5):
                t0 = time.perf_counter()
                session.run(None, x)
                times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) * 1e6 / length for t in times]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1,256,56,56", help="feature map N,C,H,W for the elementwise passes")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args(argv)
    shape = [int(v) for v in args.shape.split(",")]
    tiny = per_node_us(chain("Add", [1, 16], 700), [1, 16], 700, [(2, False)], args.rounds * 4)[0]
    print(f"fixed cost of a node (700 Add nodes on a 1×16 tensor, 2 threads, spinning off): {tiny:.2f} µs")
    configs = [(1, False), (2, False), (2, True)]
    print(f"\nµs per elementwise pass over a {'×'.join(map(str, shape))} float32 map (median of chains of 30 nodes)")
    print("| op | 1 thread | 2 threads, spinning off | 2 threads, spinning on |")
    print("|---|---|---|---|")
    for op in ("Relu", "Clip", "Add", "Mul (per channel)", "Add (per channel)"):
        us = per_node_us(chain(op, shape, 30), shape, 30, configs, args.rounds)
        print(f"| {op} | " + " | ".join(f"{u:.0f}" for u in us) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
