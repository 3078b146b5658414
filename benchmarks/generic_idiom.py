"""Latency of the generic family's dynamic-batch graphs (ONNX Runtime CPU): KernelWarehouse, WeightNet.

The networks are this repository's own implementations from the papers
(``sample_models/generic_nets.py``: KernelWarehouse kw1x ResNet-18 and ResNet-50, a WeightNet
ResNet-18), random weights with BatchNorm statistics away from the identity. For each network and
batch size these graphs are timed in one run, interleaved round-robin
(``dcd_deploy.runtime.timing.measure_interleaved``), 2 threads, intra-op spinning off:

* ``plain``: ``torch.onnx.export`` (TorchScript) of the original network at that fixed batch, what
  a user gets today (one file per batch size: with a dynamic batch axis the export fails,
  "kernel of unknown shape"; ``naive`` in the JSON says what ``dcd_deploy.bench.naive`` got);
* ``dcd-deploy <form>``: the ONE dynamic-batch graph, every batch-folded convolution lowered to
  ``form`` (``unfold``, ``loop``, or ``auto``: the cost model's choice per layer), exported as
  ``dcd-deploy export`` does (traced at batch 2, Loops expanded, onnxsim);
* ``twin``: the static twin (each dynamic layer one plain convolution of the call's shape), the
  floor a dynamic network can hope for.

Each dcd-deploy graph's output is compared with a float64 evaluation of the original network. The
table gives medians and ``dyn/plain`` (target ≤ 1.25).

    python benchmarks/generic_idiom.py --json benchmarks/results/generic_idiom_cpu.json
    python benchmarks/generic_idiom.py --models kw_resnet18 --batches 1 --runs 10 --forms loop
"""

from __future__ import annotations

import argparse
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
from dcd_deploy.exporting.folded import expand_folded_convs
from dcd_deploy.exporting.loops import count_loops, expand_per_sample_convs
from dcd_deploy.exporting.pipeline import simplify
from dcd_deploy.lowering import lower_model, relative_error
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.runtime.runners import OrtRunner
from dcd_deploy.runtime.timing import measure_interleaved
from dcd_deploy.sysinfo import machine, versions
from sample_models import generic_nets as gn

MODELS = {
    "kw_resnet18": lambda: gn.kw_resnet18(temperature=0.3),
    "kw_resnet50": lambda: gn.kw_resnet50(temperature=0.3),
    "weightnet_resnet18": lambda: gn.weightnet_resnet18(),
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
    """The dcd-deploy dynamic-batch graph (traced at batch 2, as the export does) and its forms."""
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    lowered, report = lower_model(model, example, form)
    if not report:
        raise SystemExit(f"lowering failed: {report.summary()}")
    graph, _ = simplify(expand_per_sample_convs(expand_folded_convs(_onnx(lowered, torch.cat([example, example]),
                                                                          dynamic=True))))
    forms = sorted({layer.form for layer in report.lowered})
    return graph.SerializeToString(), f"{'+'.join(forms)}; {count_loops(graph)} loops"


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
    return model


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    model = build(name)
    example = torch.randn(1, 3, args.size, args.size)
    graphs = {f"dcd-deploy {form}": dynamic_graph(model, args.size, form) for form in args.forms}
    twin, _ = simplify(_onnx(static_twin(model, example=example), torch.cat([example, example]), dynamic=True))
    _, naive_note, naive_failure = naive_export(model, (args.size, args.size))
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        plain = _onnx(model, x, dynamic=False).SerializeToString()
        entries = [("plain", plain), *((label, g) for label, (g, _) in graphs.items()), ("twin", twin.SerializeToString())]
        runners = [OrtRunner(label, graph, x.numpy(), PROVIDER, args.threads) for label, graph in entries]
        measured = {m.label: m for m in measure_interleaved(runners, warmup=args.warmup, runs=args.runs,
                                                             threads=args.threads)}
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(x.double())
        errors = {r.label: relative_error(torch.from_numpy(np.asarray(r.output())), ref) for r in runners
                  if r.output() is not None and r.label != "twin"}
        for r in runners:
            r.close()
        ms = {label: m.stats.p50 * 1e3 if m.stats else float("nan") for label, m in measured.items()}
        for label, (_, forms) in graphs.items():
            rows.append({"model": name, "batch": batch, "graph": label, "forms": forms, "plain_ms": ms["plain"],
                         "dyn_ms": ms[label], "twin_ms": ms["twin"], "dyn_over_plain": ms[label] / ms["plain"],
                         "dyn_over_twin": ms[label] / ms["twin"], "error": errors.get(label),
                         "plain_error": errors.get("plain"), "naive": naive_note or f"failed: {naive_failure}",
                         "skipped": {lb: m.skipped for lb, m in measured.items() if m.skipped}})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (f"| {r['model']} | {r['batch']} | {r['graph']} | {r['plain_ms']:.1f} | {r['dyn_ms']:.1f} | "
            f"{r['dyn_over_plain']:.2f} | {r['twin_ms']:.1f} | {r['error']:.1e} | {r['forms']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--forms", default="auto,folded,loop,unfold", type=lambda s: s.split(","))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"{machine()}; {versions()}; {args.size}×{args.size}, {args.threads} threads, median of {args.runs}")
    print("| model | batch | graph | plain ms | dcd-deploy ms | dyn/plain | twin ms | rel. error | forms |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, args)
        if args.json:  # written after each model: a long run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
    best = {}
    for r in rows:
        if r["graph"] == "dcd-deploy auto":
            best[(r["model"], r["batch"])] = r["dyn_over_plain"]
    return 0 if all(v <= 1.25 for v in best.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
