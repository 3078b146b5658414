"""Train the CondConv / DyConv / ODConv sample checkpoints on the committed digits data.

The networks come from ``sample_models/dynamic_nets.py`` (the published layers' forward passes);
data, preprocessing, augmentation, optimiser, schedule and evaluation are those of ``train.py``
(imported, not copied). ``settings_dynamic.json`` names its base settings file (``settings.json``:
input, augmentation, seed, batch size) and overrides the training length and learning rate; each
model names its factory in ``dynamic_nets`` and the factory's options.

DyConv models anneal their softmax temperature as the published training does: 34 at the first
epoch, 3 lower at each following epoch, 1 from the twelfth on (``update_temperature``). The
temperature is a module attribute, not in the state dict: the final value is saved as a factory
option (``model_args``, e.g. ``temperature=1``) and must be passed when the network is rebuilt.

What one run writes into the output folder (``sample_models/`` by default):

    <name>.pth     {'state_dict' (no prefixes), 'epoch', 'best_prec1', 'factory', 'model_args'};
                   no optimizer state. Loads with torch.load(path, weights_only=True), and with
                   dcd-deploy --model sample_models.dynamic_nets:<factory> --model-arg k=v ...
    results.json   merged: this run's models are added/replaced, the others are kept

Every checkpoint is loaded back (weights_only, strict) and its held-out accuracy reproduced.

Usage (from the repository root):

    python sample_models/train_dynamic.py                        # all models
    python sample_models/train_dynamic.py --only dy_resnet10_digits
    python sample_models/train_dynamic.py --verify-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: make `sample_models` and `dcd_deploy` importable
    sys.path.insert(0, str(HERE.parent))

from sample_models import dynamic_nets, train

DEFAULT_SETTINGS = HERE / "settings_dynamic.json"


def load_settings(path: Path) -> dict[str, Any]:
    """The base settings with this file's training overrides and model list."""
    with open(path, encoding="utf-8") as f:
        own = json.load(f)
    settings = train.load_settings(path.parent / own["base"])
    settings["training"] = {**settings["training"], **own.get("training", {})}
    settings["models"] = own["models"]
    settings["data"] = str(path.parent / settings["data"])
    return settings


def build(spec: dict[str, Any]) -> nn.Module:
    return dynamic_nets.FACTORIES[spec["factory"]](**spec["options"])


def anneal(kind: str | None):
    """The per-epoch temperature hook for ``train.train_one``."""
    if kind is None:
        return None
    if kind != "dyconv":
        raise ValueError(f"unknown temperature schedule {kind!r} (expected 'dyconv')")

    def step(model: nn.Module, epoch: int, _epochs: int) -> None:
        if epoch > 0:
            model.update_temperature()
    return step


def final_spec(spec: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``spec`` with the temperature training ended at (an attribute: the state dict does not hold it)."""
    if spec.get("temperature") is None:
        return spec
    temps = {m.attention.temperature for m in model.modules() if isinstance(m, dynamic_nets.Dynamic_conv2d)}
    if len(temps) != 1:
        raise AssertionError(f"{spec['name']}: expected one temperature, found {sorted(temps)}")
    return {**spec, "options": {**spec["options"], "temperature": temps.pop()}}


def model_args(spec: dict[str, Any]) -> list[str]:
    """The --model-arg values that rebuild the network."""
    return [f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in spec["options"].items()]


def save(path: Path, model: nn.Module, spec: dict[str, Any], epoch: int, acc: float) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": int(epoch), "best_prec1": float(acc),
                "factory": f"sample_models.dynamic_nets:{spec['factory']}", "model_args": model_args(spec)}, path)


def verify(spec: dict[str, Any], settings: dict[str, Any], data: train.DigitsData, path: Path) -> float:
    """Reload like a user (weights_only, strict) and reproduce the recorded accuracy."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build(spec)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    train.check_batchnorm_trained(model, spec["name"])
    test_x = train.preprocess(data.images[data.test_idx], settings["input"])
    correct, acc = train.evaluate(model, test_x, torch.from_numpy(data.labels[data.test_idx]))
    if acc != ckpt["best_prec1"]:
        raise AssertionError(f"{path.name}: reloaded accuracy {acc} != best_prec1 {ckpt['best_prec1']}")
    print(f"verified {path.name}: weights_only load, strict=True, held-out accuracy {acc:.2f}% "
          f"({correct}/{len(test_x)}) == best_prec1", flush=True)
    return acc


def record(results_path: Path, spec: dict[str, Any], path: Path, run: dict[str, Any]) -> None:
    """Merge this model's entry into results.json (re-read right before writing)."""
    results = train.read_results(results_path)
    results.setdefault("models", {})[spec["name"]] = {
        "factory": f"sample_models.dynamic_nets:{spec['factory']}", "options": spec["options"],
        "model_args": model_args(spec), "checkpoint": path.name, "epoch": run["epoch"],
        "held_out_accuracy": run["held_out_accuracy"], "held_out_correct": run["held_out_correct"],
        "held_out_total": run["held_out_total"], "train_seconds": run["train_seconds"],
        "size_bytes": path.stat().st_size, "sha256": train.sha256(path),
        "params": sum(p.numel() for p in run["model"].parameters()),
    }
    train.write_results(results_path, results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="settings file (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="output folder (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="NAME", help="train/verify only this model (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the settings' num_threads)")
    parser.add_argument("--verify-only", action="store_true", help="do not train; re-check existing checkpoints")
    args = parser.parse_args(argv)

    settings = load_settings(args.settings)
    torch.set_num_threads(args.threads or int(settings["training"].get("num_threads", 2)))
    torch.use_deterministic_algorithms(True)
    data = train.load_digits_npz(Path(settings["data"]))
    names = [m["name"] for m in settings["models"]]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; {args.settings.name} has {names}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for spec in settings["models"]:
        if args.only and spec["name"] not in args.only:
            continue
        path = args.out_dir / f"{spec['name']}.pth"
        if not args.verify_only:
            start = time.perf_counter()
            run = train.train_one(spec, settings, data, build=build, on_epoch=anneal(spec.get("temperature")))
            spec = final_spec(spec, run["model"])
            save(path, run["model"], spec, run["epoch"], run["held_out_accuracy"])
            record(args.out_dir / "results.json", spec, path, run)
            print(f"[{spec['name']}] saved {path.name} ({path.stat().st_size:,} bytes) in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        if args.verify_only and spec.get("temperature") is not None:  # the trained value is in results.json
            recorded = train.read_results(args.out_dir / "results.json")["models"][spec["name"]]["options"]
            spec = {**spec, "options": recorded}
        verify(spec, settings, data, path)


if __name__ == "__main__":
    main()
