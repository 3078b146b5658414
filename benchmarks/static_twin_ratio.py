"""Issue 6 benchmark: latency of deployed DCD models relative to their static twins.

For each network (random weights with calibrated BatchNorms: latency does not depend on the
values), three ONNX graphs are built from the same model:

* ``static``: the static twin (each DCD layer replaced by its W0 conv, the head by its Linear),
  exported by torch.onnx and simplified with onnxsim, the floor a DCD model can hope for;
* ``plain``: ``torch.onnx.export(dynamo=True)`` of the original DCD network;
* ``dcd-deploy``: ``dcd_deploy.export`` (lowered, folded, simplified).

All sessions run on ONNX Runtime CPU with the same thread count and intra-op spinning off, in one
run, interleaved round-robin on the same input; the table gives medians and ratios to ``static``.

    python benchmarks/static_twin_ratio.py                    # the BENCHMARKS.md table
    python benchmarks/static_twin_ratio.py --models resnet18_dcd --batches 1 --runs 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from dcd_deploy.bench import naive_export
from dcd_deploy.onnx_export import export
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.runtime import create_session
from dcd_deploy.sysinfo import machine, versions
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

MODELS = {
    "mobilenetv2_dcd": {"fc_squeeze": 16},
    "resnet50_dcd": {},
    "resnet18_dcd": {},
}


def static_graph(model: torch.nn.Module, size: int, tmp: Path) -> bytes:
    """The static twin, exported like any model (torch.onnx, onnxsim, checks)."""
    return export(static_twin(model), tmp / "static.onnx", input_size=size, self_check=False).path.read_bytes()


def measure(graphs: dict[str, bytes], batch: int, size: int, threads: int, runs: int) -> dict[str, list[float]]:
    sessions = {k: create_session(g, "cpu", threads=threads, spinning=False) for k, g in graphs.items()}
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    for s in sessions.values():
        for _ in range(2):
            s.run(None, {"input": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per row at batch 1 (fewer at larger batches)")
    ap.add_argument("--form", default="auto",
                    help="dcd-deploy lowered form(s), comma-separated: auto, factored, merged (extra forms are "
                         "timed in the same interleaved run and printed after the table)")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args(argv)
    results = {"versions": versions(), "machine": machine(), "threads": args.threads, "size": args.size, "rows": []}
    print(f"ONNX Runtime {results['versions']['onnxruntime']} CPU, {args.threads} threads, spinning off, "
          f"{args.size}×{args.size}, medians of interleaved runs; ratio = latency / static twin")
    print("| model | batch | static ms | plain export ms (ratio) | dcd-deploy ms (ratio) | nodes static / plain / dcd-deploy |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = calibrate_batchnorm(create_model(name, **MODELS.get(name, {})), 64)
        plain, _, plain_error = naive_export(model, (args.size, args.size), ("dynamo",))
        forms = args.form.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            graphs = {"static": static_graph(model, args.size, Path(tmp))}
            if plain is not None:
                graphs["plain"] = plain
            for i, form in enumerate(forms):
                result = export(model, Path(tmp) / f"{form}.onnx", input_size=args.size, form=form, self_check=False)
                graphs["dcd-deploy" if i == 0 else f"dcd-deploy[{form}]"] = (Path(tmp) / f"{form}.onnx").read_bytes()
                if i == 0:
                    first = result
        nodes = {k: len(onnx.load_from_string(g).graph.node) for k, g in graphs.items()}
        for batch in [int(b) for b in args.batches.split(",")]:
            runs = max(8, args.runs // batch * 2) if batch > 1 else args.runs
            times = measure(graphs, batch, args.size, args.threads, runs)
            med = {k: float(np.median(v)) for k, v in times.items()}
            ratio = {k: med[k] / med["static"] for k in med}
            row = {"model": name, "batch": batch, "runs": runs, "median_s": med, "ratio_to_static": ratio,
                   "nodes": nodes, "plain_error": plain_error,
                   "forms": {f: sum(1 for layer in first.report.lowered if layer.form == f)
                             for f in ("factored", "merged", "gemm")}}
            results["rows"].append(row)
            plain_cell = f"{med['plain'] * 1e3:.1f} ({ratio['plain']:.2f}×)" if "plain" in med else f"failed: {plain_error}"
            print(f"| {name} | {batch} | {med['static'] * 1e3:.1f} | {plain_cell} | "
                  f"{med['dcd-deploy'] * 1e3:.1f} ({ratio['dcd-deploy']:.2f}×) | "
                  f"{nodes['static']} / {nodes.get('plain', '-')} / {nodes['dcd-deploy']} |", flush=True)
            for key in graphs:
                if key.startswith("dcd-deploy["):
                    print(f"  {name} batch {batch} {key}: {med[key] * 1e3:.1f} ms ({ratio[key]:.2f}×)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
