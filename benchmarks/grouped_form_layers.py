"""Per layer: the static-batch ``grouped`` form against the portable forms, and the cost model's choice.

Times every lowered form a fixed-batch export may choose (``factored``, ``merged`` where the layer
is 1×1 stride 1, ``grouped``) of every distinct DCD convolution of the zoo networks, each layer
exported alone at the input shape it sees in the network (batch N), the forms interleaved on ONNX
Runtime CPU with spinning off (what ``dcd-deploy export --batch N --tune`` measures), then prints
per layer the times, the fastest form and the one the CPU cost model picks (``grouped_cost`` in
``lowering/families/dcd_conv.py``), flagging where the model picks a form more than 10 % slower.

    python benchmarks/grouped_form_layers.py                           # the three networks at batch 1
    python benchmarks/grouped_form_layers.py --models resnet18_dcd --batch 2 --runs 8
"""

from __future__ import annotations

import argparse
import sys

import torch

from dcd_deploy.exporting.tuning import time_forms
from dcd_deploy.lowering import lower_model
from dcd_deploy.lowering.costmodel import CostChooser
from dcd_deploy.zoo import create_model, list_archs
from dcd_deploy.zoo.calibration import calibrate_batchnorm

MODELS = {"mobilenetv2_dcd": {"fc_squeeze": 16}, "resnet50_dcd": {}, "resnet18_dcd": {}}


def distinct_layers(model: torch.nn.Module, size: int, batch: int) -> list[tuple]:
    """(family, info, input shape, original layer) of each distinct DCD convolution, seen at ``batch``."""
    seen: dict[tuple, tuple] = {}

    def record(family, info, in_shape, layer, static_batch=None):
        if info.family == "dcd_conv":
            key = (info.c_in, info.c_out, info.kernel, info.stride, info.latent, info.pool, in_shape[1:])
            seen.setdefault(key, (family, info, in_shape, layer))
        return family.forms(info, in_shape)[0]

    lower_model(model, torch.randn(batch, 3, size, size), choose_form=record, check=False, static_batch=batch)
    return list(seen.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=12)
    args = ap.parse_args(argv)
    if unknown := [m for m in args.models.split(",") if m not in list_archs()]:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(list_archs())}")
    chooser = CostChooser("cpu")
    print(f"| model | layer | map | factored ms | merged ms | grouped ms | fastest | cost model | (batch {args.batch}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    wrong = total = 0
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = calibrate_batchnorm(create_model(name, **MODELS.get(name, {})), 64)
        for family, info, shape, layer in distinct_layers(model, args.size, args.batch):
            forms = family.forms(info, shape, args.batch)
            times = time_forms(layer, info, shape, forms, args.threads, args.runs, "cpu", args.batch)
            fastest = min(times, key=times.get)
            pick = chooser(family, info, shape, layer, static_batch=args.batch)
            slower = times[pick] > 1.1 * times[fastest]
            wrong, total = wrong + slower, total + 1
            cells = " | ".join(f"{times[f] * 1e3:.3f}" if f in times else "-" for f in ("factored", "merged", "grouped"))
            print(f"| {name} | {info.c_in}→{info.c_out} {info.geometry()} L{info.latent} | {shape[2]}×{shape[3]} | "
                  f"{cells} | {fastest} | {pick}{' (>10 % slower)' if slower else ''} |", flush=True)
    print(f"\ncost model picks a form more than 10 % slower than the fastest on {wrong} of {total} layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
