"""Static-twin benchmark: latency of deployed DCD models relative to their static twins.

For each network (random weights with calibrated BatchNorms: latency does not depend on the
values), these ONNX graphs are built from the same model:

* ``static``: the static twin (each DCD layer replaced by its W0 conv, the head by its Linear),
  exported by ``dcd_deploy.export`` (torch.onnx, onnxsim, checks), the floor a DCD model can hope for;
* ``plain``: ``torch.onnx.export(dynamo=True)`` of the original DCD network (``--no-plain`` skips it);
* ``dcd-deploy``: ``dcd_deploy.export`` (lowered, folded, simplified), one graph per ``--form``:
  ``auto`` (CPU cost model), ``cuda`` (CUDA cost model), ``tune`` (each layer's form timed on the
  provider), ``factored``, ``merged``, or ``cpu:K:D:F``: the CPU cost model with other constants
  (KERNEL_COST, pass difference, FACTORED_FIXED; see ``benchmarks/fit_cost_model.py``). With ``--fp16`` the static twin and every dcd-deploy graph
  are also exported in float16 and compared with the float16 twin;
* ``floor`` (``--floor``): a lower bound, not a correct model. The ``auto`` lowering with every DCD
  layer's low-rank branch P·Φ·Q deleted, so each layer is its static convolution W0 (or the merged
  MatMul with K = diag(s)·W0) scaled per sample and channel by s = Λ(x), with the attention MLP that
  computes s. Any lowering into static convolutions and batched MatMuls does at least this much
  beyond the static twin (pool the layer input, run the attention MLP, apply a per-sample channel
  scale), so the floor's ratio shows how far the graph vocabulary itself can go on a provider.
* ``dcd-deploy-b<N>`` (``--batch-specific``): ``dcd_deploy.export(..., batch=N)``, a file for batch N
  only, whose layers may use the static-batch ``grouped`` form (each sample's kernel formed, one
  grouped convolution with a computed weight), chosen by the cost model; timed at batch N only.
  With ``--floor`` also ``floor-b<N>``: that export's forms with every low-rank branch deleted
  (a grouped layer's kernel is diag(s)·W0 with a constant bias, the others as in ``floor``), the
  lower bound of a fixed-batch export, and ``floor-b<N>[grouped]``: every layer forced into the
  grouped form, low-rank branch deleted.

All sessions run on one ONNX Runtime provider with the same thread count and intra-op spinning
off, in one run, interleaved round-robin (``dcd_deploy.latency.measure_interleaved``, the runner
of ``dcd-deploy bench``; GPU sessions bind input and output on the device); the table gives
medians and ratios to ``static``. Every graph's output is compared with the original PyTorch
network (max |Δ| / max |ref|).

    python benchmarks/static_twin_ratio.py                    # the BENCHMARKS.md CPU table
    python benchmarks/static_twin_ratio.py --models resnet18_dcd --batches 1 --runs 20
    python benchmarks/static_twin_ratio.py --provider cuda --cuda-graph both --fp16 --form auto,cuda,tune
    python benchmarks/static_twin_ratio.py --no-plain --floor              # with the lower bound
    python benchmarks/static_twin_ratio.py --no-plain --batches 1 --batch-specific --floor
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

from dcd_deploy.bench.naive import naive_export
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.tuning import tuned_form_chooser
from dcd_deploy.lowering import lower_model, relative_error
from dcd_deploy.lowering.families.dcd_conv import LoweredDcdConv, cost_chooser
from dcd_deploy.lowering.grouped import GroupedDcdConv
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.runtime.runners import OrtRunner
from dcd_deploy.runtime.session import provider_name
from dcd_deploy.runtime.timing import measure_interleaved
from dcd_deploy.sysinfo import machine, versions
from dcd_deploy.zoo import create_model, list_archs
from dcd_deploy.zoo.calibration import calibrate_batchnorm

MODELS = {
    "mobilenetv2_dcd": {"fc_squeeze": 16},
    "resnet50_dcd": {},
    "resnet18_dcd": {},
}
FORMS = ("auto", "cuda", "tune", "factored", "merged")


class ScaleOnlyConv(LoweredDcdConv):
    """A lowered DCD convolution with its low-rank branch P·Φ·Q deleted (the ``floor`` graph).

    Keeps what every lowering must do: pool x, run the attention MLP for s, scale W0's output per
    sample and channel, add the folded bias. It computes a different function than the DCD layer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.clamp(self.scale(self.squeeze(x)), 0.0, 6.0)
        if self.form == "merged":
            h, w = self.in_hw
            out = torch.matmul(s.unsqueeze(2) * self.w0, x.reshape(-1, self.c_in, h * w)) + self.p_b
            return out.view(-1, self.c_out, h, w)
        return self.conv(x) * s.view(-1, self.c_out, 1, 1) + self.p.bias.view(1, -1, 1, 1)


class ScaleOnlyGroupedConv(GroupedDcdConv):
    """The grouped (static-batch) form with its low-rank branch deleted (the ``floor-b<N>`` graph):
    kernel diag(s)·W0 per sample, constant bias. It computes a different function than the DCD layer."""

    def kernels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = self.batch, self.kernel
        s = torch.clamp(self.scale(self.squeeze(x)), 0.0, 6.0)
        kernel = (s.unsqueeze(2) if k == 1 else s.reshape(n, self.c_out, 1, 1, 1)) * self.w0
        return kernel.reshape(n * self.c_out, self.c_in, k, k), self.p_b.reshape(1, -1).expand(n, -1).reshape(-1)

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        return self.gated_squeeze(self.pool(x))


def floor_model(model: torch.nn.Module, size: int, batch: int | None = None, form: str = "auto",
                channels_last: bool = False) -> torch.nn.Module:
    """The ``form``-lowered network (with a ``batch``: for that batch only, static-batch forms
    allowed; ``channels_last``: the int8 lowering) with every DCD convolution's low-rank branch
    deleted: :class:`ScaleOnlyConv` for the portable forms, :class:`ScaleOnlyGroupedConv` for the grouped form."""
    lowered, _ = lower_model(model, torch.randn(batch or 1, 3, size, size), form, check=False, static_batch=batch,
                             channels_last=channels_last)
    for module in lowered.modules():
        if isinstance(module, LoweredDcdConv):
            module.__class__ = ScaleOnlyConv
        elif isinstance(module, GroupedDcdConv):
            module.__class__ = ScaleOnlyGroupedConv
    return lowered


def batch_specific_graphs(model: torch.nn.Module, size: int, batch: int, floor: bool, tmp: Path, log) -> dict[str, bytes]:
    """``dcd-deploy-b<N>`` (a fixed-batch export, cost-model forms) and, with ``floor``, ``floor-b<N>``."""
    result = export(model, tmp / f"b{batch}.onnx", input_size=size, batch=batch, self_check=False)
    forms = {f: sum(1 for layer in result.report.lowered if layer.form == f) for f in ("factored", "merged", "grouped")}
    log(f"  batch-specific b{batch}: forms {forms}")
    graphs = {f"dcd-deploy-b{batch}": result.path.read_bytes()}
    for form in ("auto", "grouped") if floor else ():
        key = f"floor-b{batch}" + ("" if form == "auto" else f"[{form}]")
        graphs[key] = export(floor_model(model, size, batch, form), tmp / f"{key}.onnx", input_size=size, batch=batch,
                             allow_unlowered=True, self_check=False,
                             metadata={"dcd_deploy.batch_specific": "true"}).path.read_bytes()
    return graphs


def constants_chooser(spec: str):
    """``cpu:K:D:F``: choose with the CPU cost model's KERNEL_COST K, pass difference D, FACTORED_FIXED F."""
    k, d, f = (float(v) for v in spec.split(":")[1:])
    return cost_chooser("cpu", kernel_cost=k, pass_difference=d, factored_fixed=f)


def _known_form(form: str) -> bool:
    if form.startswith("cpu:"):
        try:
            return len([float(v) for v in form.split(":")[1:]]) == 3
        except ValueError:
            return False
    return form in FORMS


def build_graphs(model: torch.nn.Module, size: int, forms: list[str], provider: str, plain: bool, fp16: bool,
                 floor: bool, tmp: Path, log) -> tuple[dict[str, bytes], dict[str, object]]:
    graphs: dict[str, bytes] = {}
    info: dict[str, object] = {}
    twin = static_twin(model)
    for half in ([False, True] if fp16 else [False]):
        suffix = "-fp16" if half else ""
        graphs["static" + suffix] = export(twin, tmp / "static.onnx", input_size=size, fp16=half,
                                           self_check=False).path.read_bytes()
    if plain:
        data, _, error = naive_export(model, (size, size), ("dynamo",))
        if data is not None:
            graphs["plain"] = data
        info["plain_error"] = error
    for i, form in enumerate(forms):
        t = time.perf_counter()
        if form == "tune":
            chooser, target = tuned_form_chooser(target=provider), provider
        elif form == "cuda":
            chooser, target = "auto", "cuda"
        elif form.startswith("cpu:"):
            chooser, target = constants_chooser(form), "cpu"
        else:
            chooser, target = form, "cpu"
        for half in ([False, True] if fp16 else [False]):
            key = ("dcd-deploy" if i == 0 else f"dcd-deploy[{form}]") + ("-fp16" if half else "")
            result = export(model, tmp / f"form{i}.onnx", input_size=size, form=chooser, target=target, fp16=half,
                            self_check=False)
            graphs[key] = result.path.read_bytes()
            info[key] = {f: sum(1 for layer in result.report.lowered if layer.form == f) for f in ("factored", "merged")}
        log(f"  {form}: forms {info[key]} ({time.perf_counter() - t:.1f} s)")
    if floor:
        graphs["floor"] = export(floor_model(model, size), tmp / "floor.onnx", input_size=size, allow_unlowered=True,
                                 self_check=False).path.read_bytes()
    return graphs, info


def measure(graphs: dict[str, bytes], x: np.ndarray, provider: str, threads: int, runs: int, cuda_graph: str,
            ref: np.ndarray) -> dict[str, dict[str, float]]:
    modes = {"off": [False], "on": [True], "both": [False, True]}[cuda_graph] if provider != "cpu" else [False]
    runners, keys = [], []
    for graph_mode in modes:
        for key, data in graphs.items():
            label = key + ("+graph" if graph_mode else "")
            runners.append(OrtRunner(label, data, x, provider_name(provider), threads, graph_mode))
            keys.append(label)
    results = measure_interleaved(runners, warmup=5 if provider == "cpu" else 20, runs=runs, threads=threads)
    out: dict[str, dict[str, float]] = {}
    for key, runner, m in zip(keys, runners, results):
        if m.stats is None:
            out[key] = {"skipped": m.skipped}  # type: ignore[dict-item]
            continue
        o = runner.output()
        err = relative_error(torch.from_numpy(o), torch.from_numpy(ref)) if o is not None else float("nan")
        out[key] = {"median_s": m.stats.p50, "rel_err": err}
        runner.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed rounds at batch 1 (fewer at larger batches on CPU)")
    ap.add_argument("--form", default="auto",
                    help=f"dcd-deploy graph(s), comma-separated from {', '.join(FORMS)}; the first is the table's "
                         "dcd-deploy column, the others are printed below it")
    ap.add_argument("--fp16", action="store_true", help="also compare float16 graphs with the float16 static twin")
    ap.add_argument("--cuda-graph", choices=["off", "on", "both"], default="off")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain torch.onnx export (slow to make)")
    ap.add_argument("--floor", action="store_true",
                    help="also time the floor: the auto lowering with each DCD layer's low-rank branch deleted "
                         "(a lower bound for this graph vocabulary, not a correct model)")
    ap.add_argument("--batch-specific", action="store_true",
                    help="also time dcd-deploy-b<N>: a fixed-batch export per batch N, whose layers may use the "
                         "static-batch grouped form (with --floor also its floor, floor-b<N>)")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args(argv)
    if unknown := [m for m in args.models.split(",") if m not in list_archs()]:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(list_archs())}")
    forms = args.form.split(",")
    if bad := [f for f in forms if not _known_form(f)]:
        ap.error(f"unknown form(s) {bad}; choose from {FORMS} or cpu:K:D:F")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    results = {"versions": versions(), "machine": machine(), "provider": args.provider, "threads": args.threads,
               "size": args.size, "cuda_graph": args.cuda_graph, "rows": []}
    if args.provider == "cuda":
        from dcd_deploy.runtime.session import device_name

        results["device"] = device_name("cuda")
    where = "CPU" if args.provider == "cpu" else f"CUDA ({results.get('device')}), CUDA graphs {args.cuda_graph}"
    lines = [(f"ONNX Runtime {results['versions']['onnxruntime']} {where}, {args.threads} threads, spinning off, "
              f"{args.size}×{args.size}, medians of interleaved runs; ratio = latency / static twin "
              "(fp16 rows: / fp16 static twin); err = max|Δ|/max|ref| against the PyTorch network"),
             "| model | batch | graph | static ms | plain export ms (ratio) | dcd-deploy ms (ratio) | "
             + ("floor ms (ratio) | " if args.floor else "") + "nodes static / plain / dcd-deploy |",
             "|---|---|---|---|---|---|---|" + ("---|" if args.floor else "")]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = calibrate_batchnorm(create_model(name, **MODELS.get(name, {})), 64)
        log(f"{name}: exporting")
        batches = [int(b) for b in args.batches.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            graphs, info = build_graphs(model, args.size, forms, args.provider, not args.no_plain, args.fp16, args.floor, Path(tmp), log)
            specific = {b: batch_specific_graphs(model, args.size, b, args.floor, Path(tmp), log) if args.batch_specific else {}
                        for b in batches}
        nodes = {k: len(onnx.load_from_string(g).graph.node) for k, g in [*graphs.items(), *(
            kv for per_batch in specific.values() for kv in per_batch.items())]}
        for batch in batches:
            runs = max(8, args.runs // batch * 2) if batch > 1 and args.provider == "cpu" else args.runs
            x = np.random.default_rng(batch).standard_normal((batch, 3, args.size, args.size), dtype=np.float32)
            with torch.no_grad():
                ref = model.double()(torch.from_numpy(x).double()).numpy()
            model.float()
            log(f"{name} batch {batch}: measuring {len(graphs) + len(specific[batch])} graphs")
            res = measure({**graphs, **specific[batch]}, x, args.provider, args.threads, runs, args.cuda_graph, ref)
            results["rows"].append({"model": name, "batch": batch, "runs": runs, "nodes": nodes, "forms": info,
                                    "results": res})
            for mode in sorted({k.endswith("+graph") for k in res}):
                suffix = "+graph" if mode else ""
                for prec in (["", "-fp16"] if args.fp16 else [""]):
                    static = res.get("static" + prec + suffix, {})
                    if "median_s" not in static:
                        print(f"| {name} | {batch} | {prec or 'fp32'}{suffix} | static: {static.get('skipped')} |")
                        continue
                    cells = []
                    keys = ["plain" if not prec else None, "dcd-deploy" + prec] + (["floor" if not prec else None]
                                                                                  if args.floor else [])
                    for key in keys:
                        r = res.get(f"{key}{suffix}") if key else None
                        if key is None or (key == "plain" and args.no_plain):
                            cells.append("-")
                        elif r is None:
                            cells.append(f"failed: {info.get('plain_error')}" if key == "plain" else "-")
                        elif "median_s" not in r:
                            cells.append(f"skipped: {r['skipped']}")
                        else:
                            # the floor computes another function: its error says nothing
                            err = "" if key == "floor" else f", err {r['rel_err']:.1e}"
                            cells.append(f"{r['median_s'] * 1e3:.2f} ({r['median_s'] / static['median_s']:.2f}×{err})")
                    print(f"| {name} | {batch} | {prec[1:] or 'fp32'}{suffix} | {static['median_s'] * 1e3:.2f} | "
                          + " | ".join(cells) + f" | {nodes['static' + prec]} / {nodes.get('plain', '-')} / "
                          f"{nodes['dcd-deploy' + prec]} |", flush=True)
                    for key, r in res.items():
                        if key in specific[batch] and not prec and "median_s" in r and key.endswith(suffix):
                            err = "" if key.startswith("floor") else f", err {r['rel_err']:.1e}"
                            print(f"  {name} b{batch} {key}: {r['median_s'] * 1e3:.2f} ms "
                                  f"({r['median_s'] / static['median_s']:.2f}×{err})", flush=True)
                        if key.startswith("dcd-deploy[") and key.endswith(prec + suffix) and (prec or "-fp16" not in key) \
                                and "median_s" in r and (mode or "+graph" not in key):
                            print(f"  {name} b{batch} {key}: {r['median_s'] * 1e3:.2f} ms "
                                  f"({r['median_s'] / static['median_s']:.2f}×, err {r['rel_err']:.1e})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
