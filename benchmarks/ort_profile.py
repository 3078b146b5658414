"""Where the time goes: ONNX Runtime CPU profile of an ONNX file, summed by operator type.

    python benchmarks/ort_profile.py model.onnx [batch] [size]

Runs 30 inferences with profiling on (2 threads, spinning off) and prints per-op-type kernel time
per run, share and node count. Profiling adds a fixed cost per node, so small nodes look more
expensive than they are; compare graphs with the same tool, not against wall-clock latency.
:func:`op_profile` is the measurement (``benchmarks/int8_speed.py --profile`` uses it too).
"""
from __future__ import annotations

import collections
import json
import os
import sys
import tempfile

import numpy as np

from dcd_deploy.runtime.session import create_session


def op_profile(model: str | bytes, batch: int = 1, size: int = 224, threads: int = 2,
               runs: int = 30) -> dict[str, tuple[float, int]]:
    """Operator type -> (kernel time per run in ms, nodes run per run), the most expensive first.

    ``model`` is a path or the serialized graph; symbolic input dimensions past the batch take ``size``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = create_session(model, "cpu", threads=threads, spinning=False, profile_prefix=os.path.join(tmp, "p"))
        inp = session.get_inputs()[0]
        shape = [batch] + [d if isinstance(d, int) else size for d in inp.shape[1:]]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        for _ in range(runs):
            session.run(None, {inp.name: x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    time_by: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_by[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    return {op: (us / runs / 1000, count[op] // runs) for op, us in time_by.most_common()}


def main(argv: list[str]) -> int:
    path = argv[0]
    batch = int(argv[1]) if len(argv) > 1 else 1
    size = int(argv[2]) if len(argv) > 2 else 224
    table = op_profile(path, batch, size)
    total = sum(ms for ms, _ in table.values())
    print(f"{path}: kernel time per run {total:.2f} ms, nodes executed per run {sum(n for _, n in table.values())}")
    for op, (ms, nodes) in table.items():
        print(f"{op:24s} {ms:7.2f} ms  {100 * ms / total:5.1f}%  nodes {nodes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
