"""Export speed benchmark: wall time of ``dcd_deploy.export`` against ``torch.onnx.export(dynamo=True)``.

Both export the same resnet50_dcd (random weights, calibrated BatchNorms) at 224×224 with a
dynamic batch axis, in one process, alternating, ``--repeats`` times each; medians are reported.
dcd-deploy's time includes lowering, torch.onnx, onnxsim and the graph checks; its self-check on
ONNX Runtime is timed separately (it is a verification the plain exporter does not do).

    python benchmarks/export_speed.py                 # resnet50_dcd, 2 repeats
    python benchmarks/export_speed.py --model mobilenetv2_dcd --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dcd_deploy.bench.naive import naive_export
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm


def dynamo_export(model: torch.nn.Module, size: int) -> float:
    """Seconds for ``torch.onnx.export(dynamo=True)`` with a dynamic batch (dcd-deploy bench's naive row)."""
    t = time.perf_counter()
    data, _, failure = naive_export(model, (size, size), ("dynamo",))
    if data is None:
        raise SystemExit(f"torch.onnx.export(dynamo=True) failed: {failure}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50_dcd")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = calibrate_batchnorm(create_model(args.model), 64)
    ours, checks, theirs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            result = export(model, Path(tmp) / f"ours{i}.onnx", input_size=args.size)
            ours.append(result.timings["total_s"] - result.timings.get("self_check_s", 0.0))
            checks.append(result.timings.get("self_check_s", 0.0))
            theirs.append(dynamo_export(model, args.size))
            print(f"repeat {i + 1}: dcd-deploy {ours[-1]:.1f} s (+ self-check {checks[-1]:.1f} s), "
                  f"torch.onnx.export(dynamo=True) {theirs[-1]:.1f} s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{args.model} at {args.size}: dcd-deploy export {a:.1f} s (self-check {statistics.median(checks):.1f} s more), "
          f"torch.onnx.export(dynamo=True) {b:.1f} s: {b / a:.1f}× faster")
    print("dcd-deploy stages (last run): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
