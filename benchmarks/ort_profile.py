"""Where the time goes: ONNX Runtime CPU profile of an ONNX file, summed by operator type.

    python benchmarks/ort_profile.py model.onnx [batch] [size]

Runs 30 inferences with profiling on (2 threads, spinning off) and prints per-op-type kernel time
per run, share and node count. Profiling adds a fixed cost per node, so small nodes look more
expensive than they are; compare graphs with the same tool, not against wall-clock latency.
"""
import collections
import json
import os
import sys

import numpy as np

from dcd_deploy.runtime.session import create_session

path = sys.argv[1]
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
size = int(sys.argv[3]) if len(sys.argv) > 3 else 224
s = create_session(path, "cpu", threads=2, spinning=False, profile_prefix="/tmp/dcd_deploy_profile")
inp = s.get_inputs()[0]
shape = [batch] + [d if isinstance(d, int) else size for d in inp.shape[1:]]
x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
for _ in range(30):
    s.run(None, {inp.name: x})
f = s.end_profiling()
with open(f) as fh:
    events = json.load(fh)
os.unlink(f)
by: collections.Counter = collections.Counter()
count: collections.Counter = collections.Counter()
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        op = e["args"]["op_name"]
        by[op] += e["dur"]
        count[op] += 1
total = sum(by.values())
print(f"{path}: kernel time per run {total / 30 / 1000:.2f} ms, nodes executed per run {sum(count.values()) / 30:.0f}")
for op, d in by.most_common():
    print(f"{op:24s} {d / 30 / 1000:7.2f} ms  {100 * d / total:5.1f}%  nodes {count[op] / 30:.0f}")
