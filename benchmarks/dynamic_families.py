"""Latency of the dynamic-batch graphs of CondConv, DyConv and ODConv networks (ONNX Runtime CPU).

For each network (random weights, BatchNorm scales in [0.5, 1] and shifts in [-0.2, 0.2], which
keeps the random network well conditioned; latency does not depend on the values) and each batch size, three graphs are timed in one run, interleaved
round-robin (``dcd_deploy.runtime.timing.measure_interleaved``), 2 threads, intra-op spinning off:

* ``plain``: ``torch.onnx.export`` (TorchScript) of the original network at that fixed batch,
  what a user gets today (one file per batch size; the dynamic-batch export fails);
* ``dcd-deploy``: the ONE dynamic-batch graph: every dynamic layer lowered (forms from the CPU
  cost model, or ``--form``), exported with a dynamic batch, per-sample convolutions expanded into
  ONNX Loops (``dcd_deploy.exporting.loops``), simplified with onnxsim;
* ``twin``: the static twin (each dynamic layer replaced by one convolution of an expert's shape),
  exported the same way: the floor a dynamic network can hope for.

Each graph's output is compared with a float64 evaluation of the original network. The table gives
medians, ``dyn/plain`` (target ≤ 1.25) and ``dyn/twin``.

    python benchmarks/dynamic_families.py                       # the BENCHMARKS.md table (224×224, batch 1 and 8)
    python benchmarks/dynamic_families.py --models od_mobilenetv2 --batches 1 --runs 10 --size 112
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

from dcd_deploy.exporting.loops import count_loops, expand_per_sample_convs
from dcd_deploy.exporting.pipeline import simplify
from dcd_deploy.lowering import lower_model, relative_error
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.runtime.runners import OrtRunner
from dcd_deploy.runtime.timing import measure_interleaved
from dcd_deploy.sysinfo import machine, versions
from sample_models import dynamic_nets as dn

MODELS = {
    "efficientnet_cc_b0": lambda: dn.efficientnet_cc(num_experts=4),
    "od_resnet18": lambda: dn.od_resnet18(kernel_num=4),
    "od_mobilenetv2": lambda: dn.od_mobilenetv2(kernel_num=4),
    "dy_resnet18": lambda: dn.dy_resnet18(K=4),
}
PROVIDER = "CPUExecutionProvider"


def _onnx(model: torch.nn.Module, x: torch.Tensor, dynamic: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


def dynamic_graph(model: torch.nn.Module, size: int, form: str) -> tuple[bytes, str]:
    """The dcd-deploy dynamic-batch graph and a one-line summary of the forms chosen."""
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    lowered, report = lower_model(model, example, form)
    if not report:
        raise SystemExit(f"lowering failed: {report.summary()}")
    graph, _ = simplify(expand_per_sample_convs(_onnx(lowered, example, dynamic=True)))
    forms = collections.Counter(layer.form for layer in report.lowered)
    text = ", ".join(f"{n} {f}" for f, n in sorted(forms.items())) + f"; {count_loops(graph)} loops"
    return graph.SerializeToString(), text


def twin_graph(model: torch.nn.Module, size: int) -> bytes:
    example = torch.randn(2, 3, size, size)
    graph, _ = simplify(_onnx(static_twin(model), example, dynamic=True))
    return graph.SerializeToString()


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
    return model


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    model = build(name)
    dyn, forms = dynamic_graph(model, args.size, args.form)
    twin = twin_graph(model, args.size)
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        plain = _onnx(model, x, dynamic=False).SerializeToString()
        runners = [OrtRunner(label, graph, x.numpy(), PROVIDER, args.threads)
                   for label, graph in (("plain", plain), ("dcd-deploy", dyn), ("twin", twin))]
        measured = {m.label: m for m in measure_interleaved(runners, warmup=args.warmup, runs=args.runs,
                                                             threads=args.threads)}
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(x.double())
        errors = {r.label: relative_error(torch.from_numpy(np.asarray(r.output())), ref) for r in runners[:2]
                  if r.output() is not None}
        for r in runners:
            r.close()
        ms = {label: m.stats.p50 * 1e3 if m.stats else float("nan") for label, m in measured.items()}
        rows.append({"model": name, "batch": batch, "forms": forms, "plain_ms": ms["plain"], "dyn_ms": ms["dcd-deploy"],
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
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--form", default="auto", help="auto (CPU cost model), kernel, experts or loop")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"{machine()}; {versions()}; {args.size}×{args.size}, {args.threads} threads, median of {args.runs}")
    print("| model | batch | plain ms | dcd-deploy ms | dyn/plain | twin ms | dyn/twin | rel. error | forms |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [row for name in args.models.split(",") for row in bench_model(name, args)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["dyn_over_plain"] <= 1.25 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
