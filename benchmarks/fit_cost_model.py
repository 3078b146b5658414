"""Check (and refit) the cost models that choose each dynamic layer's lowered form, from measurements.

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

``--families``: the same for CondConv, DyConv and ODConv (the four networks of
``benchmarks/dynamic_families.py``): every form the family offers for each distinct layer (``kernel``,
``experts``, ``unfold``, ``loop``), timed the same way, per sample, at each batch; then the constants of
``dcd_deploy/lowering/families/_expert_lowering.py`` are searched for the least lost time (on CPU:
KERNEL_COST, PASS_COST, LOOP_CONV_FACTOR, LOOP_FIXED, DEPTHWISE_FACTOR, UNFOLD_CONV_FACTOR,
UNFOLD_COST; with ``--provider cuda``: LAUNCH_US, BYTES_PER_US and MACS_PER_US, over the forms without control
flow, which is what ``benchmarks/gpu_check.sh`` runs). Both modes use one search (:func:`search`):
every grid point when the grid is small (DCD's three constants), else coordinate descent from the
current constants.

    python benchmarks/fit_cost_model.py --families --json benchmarks/results/fit_cost_model_families_cpu.json
    python benchmarks/fit_cost_model.py --families --load benchmarks/results/fit_cost_model_families_cpu.json
    python benchmarks/fit_cost_model.py --families --provider cuda --batches 1,16,64 --json families_cuda.json
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcd_deploy.exporting.tuning import time_forms
from dcd_deploy.lowering import FAMILIES, lower_model
from dcd_deploy.lowering.costmodel import target_forms
from dcd_deploy.lowering.families import _expert_lowering as expert_costs
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
    return choice_loss(rows, lambda r: "merged" if decision_cost(r, kernel_cost, pass_diff, fixed) < 0 else "factored",
                       lambda r: {"factored": r["factored"], "merged": r["merged"]})


def choice_loss(rows: list[dict], choose: Callable[[dict], str],
                times: Callable[[dict], dict[str, float]]) -> tuple[float, list[dict]]:
    """Seconds per sample lost over ``rows`` when ``choose`` picks each row's form instead of its fastest
    (``times``: seconds per sample of each measured form), and the rows where it loses."""
    loss, wrong = 0.0, []
    for row in rows:
        measured = times(row)
        lost = measured[choose(row)] - min(measured.values())
        if lost > 0:
            loss += lost
            wrong.append(row)
    return loss, wrong


def search(loss: Callable[[tuple[float, ...]], float], grids: Sequence[Sequence[float]],
           start: Sequence[float], exhaustive_limit: int = 50_000, restarts: int = 24) -> tuple[float, list[tuple[float, ...]]]:
    """The least ``loss`` over the grid of constants and every point found reaching it: all points when
    there are at most ``exhaustive_limit``, else coordinate descent (each constant in turn set to its best
    grid value, until a sweep improves nothing) from ``start`` and from ``restarts`` grid points drawn
    with a fixed seed; the ties returned are the descents' end points and their one-constant neighbours."""
    if math.prod(len(g) for g in grids) <= exhaustive_limit:
        scored = [(loss(point), point) for point in itertools.product(*grids)]
        best = min(score for score, _ in scored)
        return best, [point for score, point in scored if score <= best + 1e-12]
    cache: dict[tuple[float, ...], float] = {}

    def cached(point: tuple[float, ...]) -> float:
        if point not in cache:
            cache[point] = loss(point)
        return cache[point]

    def descend(point: tuple[float, ...]) -> tuple[float, ...]:
        best, improved = cached(point), True
        while improved:
            improved = False
            for i, grid in enumerate(grids):
                for value in grid:
                    candidate = point[:i] + (value,) + point[i + 1:]
                    if cached(candidate) < best - 1e-12:
                        point, best, improved = candidate, cached(candidate), True
        return point

    rng = random.Random(0)
    starts = [tuple(start)] + [tuple(rng.choice(list(g)) for g in grids) for _ in range(restarts)]
    ends = [descend(p) for p in starts]
    best = min(cached(p) for p in ends)
    ties = set()
    for point in ends:
        if cached(point) <= best + 1e-12:
            ties.add(point)
            for i, grid in enumerate(grids):
                for value in grid:
                    candidate = point[:i] + (value,) + point[i + 1:]
                    if cached(candidate) <= best + 1e-12:
                        ties.add(candidate)
    return best, sorted(ties)


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
    ap.add_argument("--families", action="store_true",
                    help="fit the CondConv / DyConv / ODConv constants (the networks of dynamic_families.py)")
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="with --families: where to time")
    args = ap.parse_args(argv)
    if args.families:
        return families_main(ap, args)
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
    best_loss, best = search(lambda c: lost_time(rows, *c)[0],
                             [range(0, 121, 5), range(0, 61, 2), (0, 1e5, 2e5, 3e5, 5e5)], current)
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


# --- the expert families (CondConv, DyConv, ODConv) -------------------------------------------------

# name -> grid, per provider; the order of the keyword arguments of _expert_lowering.form_costs
FAMILY_GRIDS = {
    "cpu": {
        "kernel_cost": (0, 1, 2, 4, 8, 16, 32, 64),
        "pass_cost": (0, 0.5, 1, 2, 4, 8, 16),
        "loop_conv_factor": (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4),
        "loop_fixed": (0, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6),
        "depthwise_factor": (1, 2, 4, 8, 16, 32),
        "unfold_conv_factor": (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6),
        "unfold_cost": (0, 0.5, 1, 2, 4, 8, 16, 32),
    },
    "cuda": {"launch_us": (1, 2, 3, 4, 6, 8, 12, 16), "bytes_per_us": (2.5e5, 5e5, 1e6, 2e6, 3e6, 4e6),
             "macs_per_us": (5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 4e8)},
}


def _dynamic_families_models():
    """The networks of benchmarks/dynamic_families.py, built the same way (one definition of them)."""
    spec = importlib.util.spec_from_file_location("dynamic_families", Path(__file__).with_name("dynamic_families.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODELS, module.build


def expert_layers(model: torch.nn.Module, size: int) -> list[tuple]:
    """(info, input shape at batch 1, original layer) of each distinct CondConv / DyConv / ODConv layer."""
    seen: dict[tuple, tuple] = {}

    def record(family, info, in_shape, layer, static_batch=None):
        if isinstance(family, expert_costs.ExpertMixingFamily):
            key = (info.family, json.dumps(info.to_dict(), sort_keys=True), in_shape[1:])
            seen.setdefault(key, (info, in_shape, layer))
        return family.forms(info, in_shape)[0]

    lower_model(model, torch.randn(1, 3, size, size), choose_form=record, check=False)
    return list(seen.values())


def _info(row: dict) -> SimpleNamespace:
    return SimpleNamespace(**row["info"])


def family_choice(row: dict, provider: str, constants: dict[str, float]) -> str:
    """The form the cost model picks for a measured row, among the forms measured."""
    costs = expert_costs.form_costs(_info(row), tuple(row["in_shape"]), provider, **constants)
    return min(row["times"], key=lambda form: costs[form])


def family_loss(rows: list[dict], provider: str, constants: dict[str, float]) -> tuple[float, list[dict]]:
    return choice_loss(rows, lambda r: family_choice(r, provider, constants), lambda r: r["times"])


def print_family_row(row: dict, provider: str, constants: dict[str, float]) -> None:
    choice = family_choice(row, provider, constants)
    fastest = min(row["times"], key=row["times"].get)
    times = ", ".join(f"{form} {t * row['batch'] * 1e3:.3f}" for form, t in row["times"].items())
    print(f"| {row['model']} | {row['layer']} | {'×'.join(map(str, row['in_shape'][2:]))} | {row['batch']} | {times} | "
          f"{fastest} | {choice}{'' if choice == fastest else ' (slower)'} |", flush=True)


def families_main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    models, build = _dynamic_families_models()
    names = args.models.split(",") if args.models != ",".join(MODELS) else list(models)
    if unknown := [m for m in names if m not in models]:
        ap.error(f"unknown model(s) {unknown}; with --families choose from {', '.join(models)}")
    grids = FAMILY_GRIDS[args.provider]
    current = {name: getattr(expert_costs, name.upper()) for name in grids}
    others = []
    for text in args.also:
        values = [float(v) for v in text.split(",")]
        if len(values) != len(grids):
            ap.error(f"--also with --families takes {len(grids)} numbers: {','.join(n.upper() for n in grids)}")
        others.append(dict(zip(grids, values)))
    print(f"ONNX Runtime {versions()['onnxruntime']} {args.provider.upper()}, {args.threads} threads, spinning off, "
          f"{args.size}×{args.size}; ms per layer run (median); choice = the cost model's ("
          + ", ".join(f"{n.upper()} {v:g}" for n, v in current.items()) + ")")
    print("| model | layer | map | batch | ms per form | fastest | choice |")
    print("|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    measured_on = {"versions": versions(), "machine": machine()}
    if args.load:
        try:
            data = json.loads(args.load.read_text())
            rows = data["rows"]
            measured_on = {"versions": data.get("versions"), "machine": data.get("machine")}
        except (OSError, ValueError, KeyError) as exc:
            ap.error(f"--load {args.load}: not the JSON of a --families --json run ({type(exc).__name__}: {exc})")
        for row in rows:
            print_family_row(row, args.provider, current)
    for name in names if not args.load else []:
        model = build(name)
        for info, in_shape, layer in expert_layers(model, args.size):
            family = FAMILIES[info.family]
            for batch in (int(b) for b in args.batches.split(",")):
                shape = (batch, *in_shape[1:])
                forms = target_forms(family, info, shape, args.provider)
                if len(forms) < 2:
                    continue
                t = time_forms(layer, info, shape, forms, args.threads,
                               args.runs if batch == 1 else max(8, args.runs // 2), args.provider)
                row = {"model": name, "family": info.family, "layer": info.summary(), "info": info.to_dict(),
                       "in_shape": list(shape), "batch": batch, "times": {f: v / batch for f, v in t.items()}}
                rows.append(row)
                print_family_row(row, args.provider, current)
    if not rows:
        ap.error("no layer with two forms to compare")
    names_ = list(grids)
    best_loss, best = search(lambda c: family_loss(rows, args.provider, dict(zip(names_, c)))[0],
                             list(grids.values()), [current[n] for n in names_])
    total = sum(min(r["times"].values()) for r in rows)
    fitted = dict(zip(names_, best[len(best) // 2]))
    print()
    summary = {}
    for label, constants in [("current constants", current), ("fitted constants", fitted)] + \
            [(f"constants {list(o.values())}", o) for o in others]:
        loss, wrong = family_loss(rows, args.provider, constants)
        summary[label] = {"constants": constants, "lost_ms_per_sample": loss * 1e3, "wrong": len(wrong)}
        print(f"{label} ({', '.join(f'{n.upper()} {v:g}' for n, v in constants.items())}): lose {loss * 1e3:.3f} ms "
              f"per sample over {len(rows)} measurements ({100 * loss / total:.1f} % of the best choice's "
              f"{total * 1e3:.2f} ms); wrong on {len(wrong)}"
              + (": " + "; ".join(f"{r['model']} {r['layer']} b{r['batch']} ({family_choice(r, args.provider, constants)} "
                                  f"instead of {min(r['times'], key=r['times'].get)})" for r in wrong) if wrong else ""))
    print(f"least loss {best_loss * 1e3:.3f} ms; {len(best)} grid points found reaching it (coordinate descent from "
          f"the current constants and from random grid points; fitted: the middle one)")
    if args.json:
        args.json.write_text(json.dumps({**measured_on, "provider": args.provider, "size": args.size, "fit": summary,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
