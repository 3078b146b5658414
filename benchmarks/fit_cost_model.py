"""Check (and refit) the CPU cost model that chooses each 1×1 DCD layer's lowered form.

Times the ``factored`` and ``merged`` forms of every distinct 1×1 stride-1 DCD convolution of the
zoo networks (each layer exported alone at the input shape it sees in the network, the two forms
interleaved on ONNX Runtime CPU with spinning off: what ``dcd-deploy export --tune`` measures) at
each batch size, then prints per layer the measured ratio merged / factored, the cost model's
choice and whether it picked the slower form. Finally it searches the three constants that decide
between the forms (``KERNEL_COST``, the cost of one element of the per-sample kernel, the
difference in output passes ``(FACTORED_PASSES - MERGED_PASSES) · PASS_COST`` and the factored
form's per-layer ``FACTORED_FIXED``) for the values that lose the least time, and reports what the
current constants lose.

    python benchmarks/fit_cost_model.py                  # mobilenetv2_dcd, resnet50_dcd; batch 1 and 8
    python benchmarks/fit_cost_model.py --models resnet50_dcd --batches 1 --json layers.json
    python benchmarks/fit_cost_model.py --load layers.json --also 2,80,0   # re-score saved measurements
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dcd_deploy.exporting.tuning import time_forms
from dcd_deploy.lowering import lower_model
from dcd_deploy.lowering.families import dcd_conv
from dcd_deploy.sysinfo import machine, versions
from dcd_deploy.zoo import create_model, list_archs
from dcd_deploy.zoo.calibration import calibrate_batchnorm

MODELS = {"mobilenetv2_dcd": {"fc_squeeze": 16}, "resnet50_dcd": {}}


def one_by_one_layers(model: torch.nn.Module, size: int) -> list[tuple]:
    """(info, input shape at batch 1, original layer) of each distinct 1×1 stride-1 DCD convolution."""
    seen: dict[tuple, tuple] = {}

    def record(family, info, in_shape, layer):
        if info.family == "dcd_conv" and (info.kernel, info.stride) == (1, 1):
            key = (info.c_in, info.c_out, info.latent, info.squeeze, info.pool, in_shape[1:])
            seen.setdefault(key, (info, in_shape, layer))
        return "factored"

    lower_model(model, torch.randn(1, 3, size, size), choose_form=record, check=False)
    return list(seen.values())


def decision_cost(row: dict, kernel_cost: float, pass_diff: float, fixed: float) -> float:
    """merged minus factored in the cost model's units (negative: merged), per sample."""
    costs = dcd_conv.cpu_costs(row["c_in"], row["c_out"], row["latent"], row["hw"], kernel_cost=kernel_cost,
                                pass_difference=pass_diff, factored_fixed=fixed)
    return costs["merged"] - costs["factored"]


def print_row(row: dict, constants: tuple[float, float, float]) -> None:
    """One table line: per-run times at the row's batch, the ratio, the choice and whether it is the slower form."""
    choice = "merged" if decision_cost(row, *constants) < 0 else "factored"
    faster = "merged" if row["merged"] < row["factored"] else "factored"
    print(f"| {row['model']} | {row['c_in']}→{row['c_out']} | {row['latent']} | {row['map']} | {row['batch']} | "
          f"{row['factored'] * row['batch'] * 1e3:.3f} | {row['merged'] * row['batch'] * 1e3:.3f} | "
          f"{row['merged'] / row['factored']:.2f} | {choice}{'' if choice == faster else ' (slower)'} |", flush=True)


def lost_time(rows: list[dict], kernel_cost: float, pass_diff: float, fixed: float) -> tuple[float, list[dict]]:
    """Seconds per sample lost over all rows by choosing with these constants, and the rows chosen wrongly."""
    wrong = [r for r in rows if (decision_cost(r, kernel_cost, pass_diff, fixed) < 0) != (r["merged"] < r["factored"])]
    return sum(abs(r["merged"] - r["factored"]) for r in wrong), wrong


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15, help="timed rounds per layer at batch 1 (8 at larger batches)")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--load", type=Path, help="score the measurements of an earlier --json run instead of measuring")
    ap.add_argument("--also", action="append", default=[], metavar="K,D,F",
                    help="also report the loss of these constants (KERNEL_COST, pass difference, FACTORED_FIXED)")
    args = ap.parse_args(argv)
    if unknown := [m for m in args.models.split(",") if m not in list_archs()]:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(list_archs())}")
    try:
        others = [tuple(float(v) for v in a.split(",")) for a in args.also]
    except ValueError:
        ap.error("--also takes three numbers: KERNEL_COST,PASS_DIFFERENCE,FACTORED_FIXED")
    if any(len(o) != 3 for o in others):
        ap.error("--also takes three numbers: KERNEL_COST,PASS_DIFFERENCE,FACTORED_FIXED")
    batches = [int(b) for b in args.batches.split(",")]
    current = (dcd_conv.KERNEL_COST, (dcd_conv.FACTORED_PASSES - dcd_conv.MERGED_PASSES) * dcd_conv.PASS_COST,
               dcd_conv.FACTORED_FIXED)
    rows: list[dict] = []
    print(f"ONNX Runtime {versions()['onnxruntime']} CPU, {args.threads} threads, spinning off, {args.size}×{args.size}; "
          f"ms per layer run (median); choice = the cost model's (KERNEL_COST {current[0]:g}, pass difference "
          f"{current[1]:g}, FACTORED_FIXED {current[2]:g})")
    print("| model | C_in→C_out | L | map | batch | factored ms | merged ms | merged/factored | choice |")
    print("|---|---|---|---|---|---|---|---|---|")
    if args.load:
        try:
            rows = json.loads(args.load.read_text())["rows"]
        except (OSError, ValueError, KeyError) as exc:
            ap.error(f"--load {args.load}: not the JSON of a --json run ({type(exc).__name__}: {exc})")
        for row in rows:
            print_row(row, current)
    for name in (args.models.split(",") if not args.load else []):
        torch.manual_seed(0)
        model = calibrate_batchnorm(create_model(name, **MODELS.get(name, {})), 64)
        for info, in_shape, layer in one_by_one_layers(model, args.size):
            for batch in batches:
                shape = (batch, *in_shape[1:])
                t = time_forms(layer, info, shape, ["factored", "merged"], args.threads,
                               args.runs if batch == 1 else max(8, args.runs // 2))
                row = {"model": name, "c_in": info.c_in, "c_out": info.c_out, "latent": info.latent,
                       "hw": in_shape[2] * in_shape[3], "map": f"{in_shape[2]}×{in_shape[3]}", "batch": batch,
                       "factored": t["factored"] / batch, "merged": t["merged"] / batch}
                rows.append(row)
                print_row(row, current)
    grid = [(lost_time(rows, k, d, f)[0], k, d, f) for k in range(0, 121, 5) for d in range(0, 61, 2)
            for f in (0, 1e5, 2e5, 3e5, 5e5)]
    best_loss = min(g[0] for g in grid)
    best = [(k, d, f) for loss, k, d, f in grid if loss <= best_loss + 1e-12]
    total = sum(min(r["merged"], r["factored"]) for r in rows)
    print()
    for label, constants in [("current constants", current)] + [(f"constants {o}", o) for o in others]:
        loss, wrong = lost_time(rows, *constants)
        print(f"{label}: lose {loss * 1e3:.3f} ms per sample over {len(rows)} measurements "
              f"({100 * loss / total:.1f} % of the best choice's {total * 1e3:.2f} ms); wrong on "
              + (", ".join(f"{r['model']} {r['c_in']}→{r['c_out']} at {r['map']} b{r['batch']} "
                           f"(merged/factored {r['merged'] / r['factored']:.2f})" for r in wrong) or "none"))
    ks = sorted({b[0] for b in best})
    print(f"least loss {best_loss * 1e3:.3f} ms with KERNEL_COST in {ks[0]}..{ks[-1]} "
          f"(e.g. {best[len(best) // 2]} as (KERNEL_COST, pass difference, FACTORED_FIXED)); "
          f"{len(best)} grid points reach it")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions(), "machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
