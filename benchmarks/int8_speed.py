"""Int8 benchmark: latency of int8 DCD exports against their float32 static twins.

For each network (random weights with calibrated BatchNorms: latency does not depend on the
values), these ONNX graphs are built from the same model:

* ``static``: the float32 static twin (each DCD layer replaced by its W0 conv), exported by
  ``dcd_deploy.export``: the reference the ratios are taken against;
* ``dcd``: the float32 dcd-deploy export (``--form auto``);
* ``int8``: ``dcd_deploy.export(..., int8=True)``, what ``dcd-deploy export --int8`` writes: every
  DCD convolution in the factored form (W0, Q and P are static convolutions, so all of them can
  run in int8; the merged form's W0 lives inside a per-sample kernel and cannot), on networks
  without depthwise convolutions lowered channels-last (attention pools as pooling-matrix
  products, the latent product on (B, HW, L)), quantized by
  ``dcd_deploy.exporting.quantize.quantize_int8`` (QDQ, the static convolutions in int8 and, on
  networks without depthwise convolutions, the per-sample scale ``Mul``, branch and residual
  ``Add``, ``Relu``, ``MaxPool`` and the pools between them (the int8 chain), attention Gemms and
  latent products float32), calibrated on ``--calibration`` seeded random images of the input size;
* ``int8-static``: the static twin quantized the same way (the floor for int8);
* ``int8-auto``: the ``--form auto`` float32 export quantized (merged layers stay float32);
* ``int8-floor`` (``--floor``): a lower bound, not a correct model: the ``int8`` graph with every DCD
  convolution's low-rank branch (Q, Φ, P) deleted (``static_twin_ratio.floor_model``: the attention
  pool and MLP, the per-sample scale and the folded bias kept), quantized the same way. No lowering
  that keeps a per-sample scale and computes the low-rank branch can be faster on these kernels;
* variants with ``--variants``: ``int8-nchw`` (the factored form lowered channels-first, as
  before the channels-last lowering: float pools and latent products that ONNX Runtime feeds
  through NHWC↔NCHW transposes), ``int8-nochain`` (only the convolutions quantized: every
  elementwise node between them a float32 island), ``int8-float-latent`` (Q and P convolutions of the factored form
  left in float32), ``int8+dynmm`` (latent MatMuls dynamically quantized), ``int8-s8`` (int8 activations).

All sessions run on ONNX Runtime's CPU provider, ``--threads`` threads, spinning off, interleaved
round-robin (``dcd_deploy.runtime.timing.measure_interleaved`` with the ``OrtRunner`` of
``dcd-deploy bench``); the table gives medians and ratios to ``static``. ``--profile MODEL`` prints
an operator-type profile of that model's ``int8``, ``int8-nchw`` (when asked for), ``int8-static`` and ``dcd`` graphs at batch 1.

    python benchmarks/int8_speed.py --floor                           # the BENCHMARKS.md table
    python benchmarks/int8_speed.py --models resnet18_dcd --batches 1 --runs 10   # a quick look
    python benchmarks/int8_speed.py --models mobilenetv2_dcd --profile mobilenetv2_dcd
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ort_profile.py and static_twin_ratio.py beside it
from ort_profile import op_profile

from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.quantize import quantize_int8
from dcd_deploy.exporting.stages import int8_runs_channels_last
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.runtime.runners import OrtRunner
from dcd_deploy.runtime.timing import measure_interleaved
from dcd_deploy.sysinfo import machine, versions
from dcd_deploy.zoo import create_model, list_archs
from dcd_deploy.zoo.calibration import calibrate_batchnorm

MODELS = {"resnet50_dcd": {}, "resnet18_dcd": {}, "mobilenetv2_dcd": {"fc_squeeze": 16}}
VARIANTS = {"int8-nchw": {}, "int8-nochain": {"chain": False}, "int8-float-latent": {"latent_convs": False}, "int8+dynmm": {"dynamic_latent": True},
            "int8-s8": {"activation": "int8"}, "int8-auto": {}}


def build_graphs(model: torch.nn.Module, size: int, calibration: int, variants: list[str], folder: Path,
                 log, floor: bool = False) -> dict[str, bytes]:
    """The float32 and int8 graphs of one network, serialized."""
    cal = np.random.default_rng(7).standard_normal((calibration, 3, size, size), dtype=np.float32)
    static = onnx.load_from_string(_export(static_twin(model), folder / "static.onnx", size))
    dcd = onnx.load_from_string(_export(model, folder / "dcd.onnx", size))
    factored = onnx.load_from_string(_export(model, folder / "factored.onnx", size, form="factored"))
    graphs = {"static": static.SerializeToString(), "dcd": dcd.SerializeToString()}
    log("  quantizing")
    export(model, folder / "int8.onnx", input_size=size, int8=True, calibration=cal, self_check=False)
    graphs["int8"] = (folder / "int8.onnx").read_bytes()
    if floor:
        from static_twin_ratio import floor_model

        lowered = floor_model(model, size, form="factored", channels_last=int8_runs_channels_last(model))
        export(lowered, folder / "floor.onnx", input_size=size, int8=True, calibration=cal, self_check=False,
               allow_unlowered=True)
        graphs["int8-floor"] = (folder / "floor.onnx").read_bytes()
    graphs["int8-static"] = quantize_int8(static, cal).SerializeToString()
    for name in variants:
        source = dcd if name == "int8-auto" else factored
        graphs[name] = quantize_int8(source, cal, **VARIANTS[name]).SerializeToString()
    return graphs


def _export(model: torch.nn.Module, path: Path, size: int, form: str = "auto") -> bytes:
    export(model, path, input_size=size, form=form, self_check=False)
    return path.read_bytes()


def measure(graphs: dict[str, bytes], x: np.ndarray, threads: int, runs: int) -> dict[str, float | str]:
    runners = [OrtRunner(label, data, x, "CPUExecutionProvider", threads) for label, data in graphs.items()]
    results = measure_interleaved(runners, warmup=5, runs=runs, threads=threads)
    for r in runners:
        r.close()
    return {r.label: (r.stats.p50 if r.stats else f"skipped: {r.skipped}") for r in results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed rounds at batch 1 (a quarter of them at batch 8)")
    ap.add_argument("--calibration", type=int, default=16, help="seeded random calibration images")
    ap.add_argument("--variants", default="", help=f"extra int8 graphs, comma-separated from {', '.join(VARIANTS)}")
    ap.add_argument("--floor", action="store_true", help="add int8-floor: the int8 graph with the low-rank branches deleted")
    ap.add_argument("--profile", default="", help="comma-separated models to profile by operator type")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args(argv)
    names = args.models.split(",")
    if unknown := [m for m in names if m not in list_archs()]:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(list_archs())}")
    variants = [v for v in args.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    results = {"versions": versions(), "machine": machine(), "threads": args.threads, "size": args.size, "rows": []}
    print(f"ONNX Runtime {results['versions']['onnxruntime']} CPU, {args.threads} threads, spinning off, "
          f"{args.size}×{args.size}, medians of interleaved runs; ratio = latency / float32 static twin")
    print("| model | batch | graph | ms | ratio |\n|---|---|---|---|---|", flush=True)
    for name in names:
        torch.manual_seed(0)
        model = calibrate_batchnorm(create_model(name, **MODELS.get(name, {})), 64)
        log(f"{name}: exporting")
        with tempfile.TemporaryDirectory() as tmp:
            graphs = build_graphs(model, args.size, args.calibration, variants, Path(tmp), log, args.floor)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = np.random.default_rng(batch).standard_normal((batch, 3, args.size, args.size), dtype=np.float32)
            log(f"{name} batch {batch}: measuring {len(graphs)} graphs")
            medians = measure(graphs, x, args.threads, max(6, args.runs // 4) if batch > 1 else args.runs)
            base = medians.get("static")
            for label, median in medians.items():
                ok = isinstance(median, float) and isinstance(base, float)
                cells = f"{median * 1000:.2f} | {median / base:.2f}×" if ok else f"{median} | -"
                print(f"| {name} | {batch} | {label} | {cells} |", flush=True)
            results["rows"].append({"model": name, "batch": batch, "median_s": medians})
        if name in args.profile.split(","):
            for label in [g for g in ("int8", "int8-nchw", "int8-static", "dcd") if g in graphs]:
                table = op_profile(graphs[label], 1, args.size, args.threads, runs=20)
                total = sum(ms for ms, _ in table.values())
                print(f"\n{name} {label}, batch 1: kernel time per run {total:.2f} ms by operator type")
                print("| op | ms | share | nodes |\n|---|---|---|---|")
                for op, (ms, n) in table.items():
                    print(f"| {op} | {ms:.2f} | {ms / total:.0%} | {n} |")
                results.setdefault("profiles", {})[f"{name}/{label}"] = table
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
