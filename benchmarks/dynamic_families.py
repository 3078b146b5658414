"""Latency of the dynamic-batch graphs of CondConv, DyConv and ODConv networks (ONNX Runtime CPU or CUDA).

For each network (random weights, BatchNorm scales in [0.5, 1] and shifts in [-0.2, 0.2], which
keeps the random network well conditioned; latency does not depend on the values) and each batch size, three graphs are timed in one run, interleaved
round-robin (``dcd_deploy.runtime.timing.measure_interleaved``), 2 threads, intra-op spinning off:

* ``plain``: ``torch.onnx.export`` (TorchScript) of the original network at that fixed batch,
  what a user gets today (one file per batch size; the dynamic-batch export fails); for the DCD
  networks of the zoo, which TorchScript cannot export, ``torch.onnx.export(dynamo=True)`` with a
  dynamic batch (one file, as ``benchmarks/static_twin_ratio.py``'s plain row);
* ``dcd-deploy``: the ONE dynamic-batch graph: every dynamic layer lowered (forms from the CPU
  cost model, or ``--form``), exported with a dynamic batch, per-sample convolutions expanded into
  ONNX Loops (``dcd_deploy.exporting.loops``), simplified with onnxsim;
* ``twin``: the static twin (each dynamic layer replaced by one convolution of an expert's shape),
  exported the same way: the floor a dynamic network can hope for.

Each graph's output (its first four samples) is compared with a float64 evaluation of the original
network. The table gives medians, ``dyn/plain`` and ``dyn/twin``; the exit status is 1 when a target
is missed: on CPU ``dyn/plain`` ≤ 1.25; on CUDA ``dyn/plain`` ≤ 1.0 at batch 16 and more, and for the
DCD networks ``dyn/twin`` ≤ 1.5 at batch 64.

``--provider cuda`` runs every graph on ONNX Runtime's CUDA provider (input and output bound on the
GPU), ``--cuda-graph`` with CUDA graphs (each session captures one graph at its batch); the
dcd-deploy graph is lowered for ``--target`` (the provider's by default), and a ``cuda`` graph must
hold no control flow (checked, as CUDA graphs require). ``--models`` also takes the zoo's
``resnet50_dcd`` and ``mobilenetv2_dcd`` (random weights, calibrated BatchNorms).

    python benchmarks/dynamic_families.py                       # the BENCHMARKS.md table (224×224, batch 1 and 8)
    python benchmarks/dynamic_families.py --models od_mobilenetv2 --batches 1 --runs 10 --size 112
    python benchmarks/dynamic_families.py --provider cuda --cuda-graph --batches 1,16,64 \
        --models efficientnet_cc_b0,od_resnet18,od_mobilenetv2,dy_resnet18,resnet50_dcd,mobilenetv2_dcd
    python benchmarks/dynamic_families.py --target cuda --size 32 --batches 1,2 --runs 2   # its dry run on a CPU
"""

from __future__ import annotations

import argparse
import collections
import copy
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcd_deploy.bench.naive import naive_export
from dcd_deploy.exporting.loops import count_loops, expand_per_sample_convs
from dcd_deploy.exporting.pipeline import simplify
from dcd_deploy.lowering import lower_model, relative_error
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.runtime.onnxfile import control_flow_nodes
from dcd_deploy.runtime.runners import OrtRunner
from dcd_deploy.runtime.session import provider_name
from dcd_deploy.runtime.timing import measure_interleaved
from dcd_deploy.sysinfo import machine, versions
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm
from sample_models import dynamic_nets as dn

MODELS = {
    "efficientnet_cc_b0": lambda: dn.efficientnet_cc(num_experts=4),
    "od_resnet18": lambda: dn.od_resnet18(kernel_num=4),
    "od_mobilenetv2": lambda: dn.od_mobilenetv2(kernel_num=4),
    "dy_resnet18": lambda: dn.dy_resnet18(K=4),
}
ZOO = ("resnet50_dcd", "mobilenetv2_dcd")  # DCD networks, also accepted by --models
REFERENCE_SAMPLES = 4  # the float64 reference is computed for the first samples only


def _onnx(model: torch.nn.Module, x: torch.Tensor, dynamic: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


def _plain(name: str, model: torch.nn.Module, x: torch.Tensor, cache: dict[str, bytes]) -> bytes:
    """The original network exported at ``x``'s batch (TorchScript); a DCD network of the zoo with
    ``dynamo=True`` and a dynamic batch, once (TorchScript cannot trace its layers)."""
    if name not in ZOO:
        return _onnx(model, x, dynamic=False).SerializeToString()
    if name not in cache:
        data, _, failure = naive_export(model, tuple(x.shape[2:]), ("dynamo",))
        if data is None:
            raise SystemExit(f"the plain export of {name} failed: {failure}")
        cache[name] = data
    return cache[name]


def dynamic_graph(model: torch.nn.Module, size: int, form: str, target: str = "cpu") -> tuple[bytes, str]:
    """The dcd-deploy dynamic-batch graph for ``target`` and a one-line summary of the forms chosen."""
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    lowered, report = lower_model(model, example, form, target=target)
    if not report:
        raise SystemExit(f"lowering failed: {report.summary()}")
    graph, _ = simplify(expand_per_sample_convs(_onnx(lowered, example, dynamic=True)))
    if target == "cuda" and (found := control_flow_nodes(graph.graph)):
        raise SystemExit(f"the --target cuda graph holds control flow: {found}")
    forms = collections.Counter(layer.form for layer in report.lowered)
    text = ", ".join(f"{n} {f}" for f, n in sorted(forms.items())) + f"; {count_loops(graph)} loops"
    return graph.SerializeToString(), text


def twin_graph(model: torch.nn.Module, size: int) -> bytes:
    example = torch.randn(2, 3, size, size)
    graph, _ = simplify(_onnx(static_twin(model), example, dynamic=True))
    return graph.SerializeToString()


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in ZOO:
        return calibrate_batchnorm(create_model(name), 64)
    model = MODELS[name]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
    return model


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    model = build(name)
    dyn, forms = dynamic_graph(model, args.size, args.form, args.target or args.provider)
    twin = twin_graph(model, args.size)
    rows, plain_cache = [], {}
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        plain = _plain(name, model, x, plain_cache)
        runners = [OrtRunner(label, graph, x.numpy(), provider_name(args.provider), args.threads, args.cuda_graph)
                   for label, graph in (("plain", plain), ("dcd-deploy", dyn), ("twin", twin))]
        measured = {m.label: m for m in measure_interleaved(runners, warmup=args.warmup, runs=args.runs,
                                                             threads=args.threads)}
        head = x[:REFERENCE_SAMPLES]
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(head.double())
        errors = {r.label: relative_error(torch.from_numpy(np.asarray(r.output())[:len(head)]), ref)
                  for r in runners[:2] if r.output() is not None}
        for r in runners:
            r.close()
        ms = {label: m.stats.p50 * 1e3 if m.stats else float("nan") for label, m in measured.items()}
        rows.append({"model": name, "batch": batch, "provider": args.provider, "cuda_graph": args.cuda_graph,
                     "target": args.target or args.provider, "forms": forms, "plain_ms": ms["plain"], "dyn_ms": ms["dcd-deploy"],
                     "twin_ms": ms["twin"], "dyn_over_plain": ms["dcd-deploy"] / ms["plain"],
                     "dyn_over_twin": ms["dcd-deploy"] / ms["twin"], "error": errors.get("dcd-deploy"),
                     "plain_error": errors.get("plain"),
                     "skipped": {label: m.skipped for label, m in measured.items() if m.skipped}})
        print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (f"| {r['model']} | {r['batch']} | {r['plain_ms']:.2f} | {r['dyn_ms']:.2f} | {r['dyn_over_plain']:.2f} | "
            f"{r['twin_ms']:.2f} | {r['dyn_over_twin']:.2f} | {r['error']:.1e} | {r['forms']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join((*MODELS, *ZOO)))
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--form", default="auto", help="auto (the target's cost model), kernel, experts, unfold or loop")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime provider timed")
    parser.add_argument("--target", choices=["cpu", "cuda"], help="the dcd-deploy graph's --target (default: the provider)")
    parser.add_argument("--cuda-graph", action="store_true", help="run every CUDA session with CUDA graphs")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if unknown := [m for m in args.models.split(",") if m not in MODELS and m not in ZOO]:
        parser.error(f"unknown model(s) {unknown}")
    graphs = " with CUDA graphs" if args.cuda_graph else ""
    print(f"{machine()}; {versions()}; ONNX Runtime {args.provider}{graphs}, target {args.target or args.provider}; "
          f"{args.size}×{args.size}, {args.threads} threads, median of {args.runs}")
    print("| model | batch | plain ms | dcd-deploy ms | dyn/plain | twin ms | dyn/twin | rel. error | forms |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    for name in args.models.split(","):
        rows += bench_model(name, args)
        if args.json:  # after every network: a run stopped by a time limit keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
    missed = [r for r in rows if not meets_target(r)]
    for r in missed:
        print(f"target missed: {r['model']} batch {r['batch']}: dyn/plain {r['dyn_over_plain']:.2f}, "
              f"dyn/twin {r['dyn_over_twin']:.2f}")
    return 1 if missed else 0


def meets_target(row: dict) -> bool:
    """CPU: dyn/plain ≤ 1.25. CUDA: dyn/plain ≤ 1.0 from batch 16, and a DCD network's dyn/twin ≤ 1.5 at batch 64."""
    if row["provider"] == "cpu":
        return row["dyn_over_plain"] <= 1.25
    ok = row["batch"] < 16 or row["dyn_over_plain"] <= 1.0
    return ok and not (row["model"] in ZOO and row["batch"] >= 64 and row["dyn_over_twin"] > 1.5)


if __name__ == "__main__":
    sys.exit(main())
