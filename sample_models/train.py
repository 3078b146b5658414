"""Train the sample DCD checkpoints on the committed digits data and save them like the reference.

Everything is driven by ``settings.json`` next to this file (architecture and options of each
model, input size and normalisation, augmentation, epochs, optimiser, lr schedule, batch size,
seed). The only data read is ``digits.npz`` (written by ``make_data.py``); scikit-learn is not
needed here.

What one run writes into the output folder (``sample_models/`` by default):

    <name>.pth     one per model in settings.json, in the reference training format:
                   {'epoch', 'arch', 'state_dict' (keys prefixed 'module.'), 'best_prec1',
                   'optimizer'}; loads with torch.load(path, weights_only=True)
    inputs.npz     16 preprocessed held-out images for parity checks: 'input' float32
                   (16, 3, 48, 48), normalised exactly as in training, and 'labels' int64 (16,)
    results.json   the measured held-out accuracy of each model, sizes and run details

After training, every checkpoint is loaded back (weights_only=True, 'module.' stripped,
strict=True into a freshly built model) and its held-out accuracy must be reproduced in eval
mode; the run fails otherwise.

Preprocessing (one function, :func:`preprocess`, used for training, evaluation and inputs.npz):
the 8×8 uint8 digit (0..16) is scaled to [0, 1] (÷16), upsampled bilinearly to 48×48
(align_corners=False), replicated to 3 channels and normalised with the mean/std from
settings.json. Training additionally applies a small random affine (rotation, scale, shift) to
the [0, 1] single-channel image before the last two steps.

Usage (from the repository root):

    python sample_models/train.py                      # train all models, write everything
    python sample_models/train.py --only mobilenetv2_dcd_w025_digits
    python sample_models/train.py --verify-only        # re-check existing checkpoints/inputs
    python sample_models/train.py --norm-stats         # print the training-split mean/std
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(REPO_ROOT) not in sys.path:  # make `dcd_deploy` importable when run as a script
    sys.path.insert(0, str(REPO_ROOT))

from dcd_deploy.zoo import create_model

DEFAULT_SETTINGS = HERE / "settings.json"
CHECKPOINT_KEYS = ("epoch", "arch", "state_dict", "best_prec1", "optimizer")


# --------------------------------------------------------------------------------------------
# Settings and data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsData:
    """The committed digits split: uint8 images (N, 8, 8) 0..16, int64 labels and index arrays."""

    images: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray


def load_settings(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        settings = json.load(f)
    names = [m["name"] for m in settings["models"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: model names must be unique, got {names}")
    return settings


def load_digits_npz(path: Path) -> DigitsData:
    with np.load(path) as f:
        data = DigitsData(
            images=f["images"], labels=f["labels"].astype(np.int64),
            train_idx=f["train_idx"].astype(np.int64), test_idx=f["test_idx"].astype(np.int64),
        )
    if data.images.dtype != np.uint8 or data.images.shape[1:] != (8, 8):
        raise ValueError(f"{path}: expected uint8 images of shape (N, 8, 8), got "
                         f"{data.images.dtype} {data.images.shape}")
    return data


# --------------------------------------------------------------------------------------------
# Preprocessing and augmentation
# --------------------------------------------------------------------------------------------


def to_unit(images: np.ndarray, input_cfg: dict[str, Any]) -> torch.Tensor:
    """uint8 digits (N, 8, 8), values 0..pixel_max -> float32 (N, 1, S, S) in [0, 1], bilinear."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).unsqueeze(1)
    x = x / float(input_cfg["pixel_max"])
    size = int(input_cfg["size"])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def normalise(x_unit: torch.Tensor, input_cfg: dict[str, Any]) -> torch.Tensor:
    """(N, 1, S, S) in [0, 1] -> (N, C, S, S) float32, channel-replicated and mean/std normalised."""
    channels = int(input_cfg["channels"])
    mean = torch.tensor(input_cfg["mean"], dtype=torch.float32).view(1, channels, 1, 1)
    std = torch.tensor(input_cfg["std"], dtype=torch.float32).view(1, channels, 1, 1)
    x = x_unit.expand(-1, channels, -1, -1)
    return ((x - mean) / std).contiguous()


def preprocess(images: np.ndarray, input_cfg: dict[str, Any]) -> torch.Tensor:
    """The deployment transform: uint8 8×8 digits -> normalised float32 (N, 3, 48, 48)."""
    return normalise(to_unit(images, input_cfg), input_cfg)


def random_affine(x_unit: torch.Tensor, aug_cfg: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Small random rotation/scale/shift of (N, 1, S, S) images; zero (background) fill."""
    n, _, h, w = x_unit.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = torch.deg2rad(uniform(-aug_cfg["max_rotation_deg"], aug_cfg["max_rotation_deg"]))
    scale = uniform(*aug_cfg["scale_range"])
    shift = float(aug_cfg["max_shift_px"])
    # affine_grid maps output coordinates to input coordinates in [-1, 1] units.
    tx = uniform(-shift, shift) * 2.0 / w
    ty = uniform(-shift, shift) * 2.0 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x_unit.shape), align_corners=False)
    return F.grid_sample(x_unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def normalisation_stats(data: DigitsData, input_cfg: dict[str, Any]) -> tuple[float, float]:
    """Mean and std of the training split after scaling to [0, 1] and upsampling."""
    x = to_unit(data.images[data.train_idx], input_cfg).to(torch.float64)
    return float(x.mean()), float(x.std())


def parity_inputs(data: DigitsData, input_cfg: dict[str, Any], count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` held-out images, classes taken round-robin (0, 1, .., 9, 0, ..), preprocessed."""
    held_labels = data.labels[data.test_idx]
    per_class = {c: list(data.test_idx[held_labels == c]) for c in np.unique(held_labels)}
    chosen: list[int] = []
    while len(chosen) < count:
        for c in sorted(per_class):
            if per_class[c] and len(chosen) < count:
                chosen.append(int(per_class[c].pop(0)))
        if not any(per_class.values()):
            break
    idx = np.asarray(chosen, dtype=np.int64)
    x = preprocess(data.images[idx], input_cfg).numpy().astype(np.float32)
    return x, data.labels[idx].astype(np.int64)


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(spec: dict[str, Any]) -> nn.Module:
    return create_model(spec["arch"], **spec["options"])


def build_optimizer(model: nn.Module, opt_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name = opt_cfg["name"].lower()
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt_cfg["lr"], momentum=opt_cfg["momentum"],
                               nesterov=opt_cfg.get("nesterov", False),
                               weight_decay=opt_cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"],
                                 weight_decay=opt_cfg["weight_decay"])
    raise ValueError(f"unknown optimizer {opt_cfg['name']!r} (expected 'sgd' or 'adamw')")


def lr_at(step: int, total_steps: int, base_lr: float, sched_cfg: dict[str, Any], steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr`` (per optimisation step)."""
    if sched_cfg["name"] != "cosine":
        raise ValueError(f"unknown lr schedule {sched_cfg['name']!r} (expected 'cosine')")
    warmup = int(sched_cfg.get("warmup_epochs", 0) * steps_per_epoch)
    min_lr = float(sched_cfg.get("min_lr", 0.0))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> tuple[int, float]:
    """Eval-mode accuracy: returns (number correct, percent)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    return correct, 100.0 * correct / len(x)


def train_one(spec: dict[str, Any], settings: dict[str, Any], data: DigitsData,
              build: Callable[[dict[str, Any]], nn.Module] | None = None,
              on_epoch: Callable[[nn.Module, int, int], None] | None = None) -> dict[str, Any]:
    """Train one model from scratch; returns the model, optimizer and a run summary.

    ``build(spec)`` makes the network (default: the zoo architecture ``spec['arch']``);
    ``on_epoch(model, epoch, epochs)`` runs before each epoch (e.g. to anneal a temperature).
    """
    tcfg, input_cfg, aug_cfg = settings["training"], settings["input"], settings["augmentation"]
    seed = int(spec.get("seed", tcfg["seed"]))
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)

    model = (build or build_model)(spec)
    optimizer = build_optimizer(model, tcfg["optimizer"])
    criterion = nn.CrossEntropyLoss(label_smoothing=float(tcfg.get("label_smoothing", 0.0)))

    train_unit = to_unit(data.images[data.train_idx], input_cfg)
    train_labels = torch.from_numpy(data.labels[data.train_idx])
    test_x = preprocess(data.images[data.test_idx], input_cfg)
    test_labels = torch.from_numpy(data.labels[data.test_idx])

    epochs, batch_size = int(tcfg["epochs"]), int(tcfg["batch_size"])
    steps_per_epoch = len(train_unit) // batch_size  # drop_last: BatchNorm needs > 1 sample
    total_steps = epochs * steps_per_epoch
    base_lr = float(tcfg["optimizer"]["lr"])
    print(f"[{spec['name']}] {spec.get('arch') or spec.get('factory')} {spec['options']}: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_unit)} train / {len(test_x)} held-out, {epochs} epochs × {steps_per_epoch} steps",
          flush=True)

    start, step, acc = time.perf_counter(), 0, 0.0
    for epoch in range(epochs):
        if on_epoch is not None:
            on_epoch(model, epoch, epochs)
        model.train()
        order = torch.randperm(len(train_unit), generator=generator)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = train_unit[idx]
            if aug_cfg.get("enabled", True):
                x = random_affine(x, aug_cfg, generator)
            x = normalise(x, input_cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, base_lr, tcfg["lr_schedule"], steps_per_epoch)
            loss = criterion(model(x), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            step += 1
        correct, acc = evaluate(model, test_x, test_labels)
        print(f"[{spec['name']}] epoch {epoch + 1:3d}/{epochs}  lr {optimizer.param_groups[0]['lr']:.5f}  "
              f"train loss {loss_sum / steps_per_epoch:.4f}  held-out acc {acc:6.2f}% "
              f"({correct}/{len(test_x)})  {time.perf_counter() - start:6.1f}s", flush=True)

    return {"model": model, "optimizer": optimizer, "epoch": epochs, "held_out_accuracy": acc,
            "held_out_correct": correct, "held_out_total": len(test_x),
            "train_seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------------------------
# Checkpoints (reference format) and verification
# --------------------------------------------------------------------------------------------


def make_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, arch: str, epoch: int,
                    best_prec1: float) -> dict[str, Any]:
    """The reference training script's checkpoint dict, keys prefixed as by DataParallel."""
    state_dict = {}
    for key, value in model.state_dict().items():
        value = value.detach().contiguous()
        if value.is_floating_point() and value.dtype != torch.float32:
            raise TypeError(f"{key}: expected float32, got {value.dtype}")
        state_dict["module." + key] = value
    return {"epoch": int(epoch), "arch": arch, "state_dict": state_dict,
            "best_prec1": float(best_prec1), "optimizer": optimizer.state_dict()}


def load_checkpoint_model(path: Path, spec: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved checkpoint the way a user would: weights_only, strip 'module.', strict."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if sorted(ckpt) != sorted(CHECKPOINT_KEYS):
        raise AssertionError(f"{path}: keys {sorted(ckpt)} != {sorted(CHECKPOINT_KEYS)}")
    if ckpt["arch"] != spec["arch"]:
        raise AssertionError(f"{path}: arch {ckpt['arch']!r} != {spec['arch']!r}")
    state = ckpt["state_dict"]
    if not all(k.startswith("module.") for k in state):
        raise AssertionError(f"{path}: every state_dict key must start with 'module.'")
    for key, value in state.items():
        if not value.is_contiguous() or (value.is_floating_point() and value.dtype != torch.float32):
            raise AssertionError(f"{path}: {key} is not a contiguous float32 tensor")
    model = build_model(spec)
    model.load_state_dict({k[len("module."):]: v for k, v in state.items()}, strict=True)
    model.eval()
    return model, ckpt


def check_batchnorm_trained(model: nn.Module, name: str) -> None:
    """Every BatchNorm must hold running statistics that training produced, not the defaults."""
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and (
            int(mod.num_batches_tracked) == 0 or (torch.all(mod.running_mean == 0) and torch.all(mod.running_var == 1))
        ):
            raise AssertionError(f"{name}: {mod_name} has default running statistics")


def verify(settings: dict[str, Any], data: DigitsData, out_dir: Path, names: list[str],
           results: dict[str, Any]) -> None:
    """Reload each checkpoint and reproduce its held-out accuracy; check inputs.npz."""
    input_cfg = settings["input"]
    test_x = preprocess(data.images[data.test_idx], input_cfg)
    test_labels = torch.from_numpy(data.labels[data.test_idx])
    inputs_path = out_dir / settings["parity_inputs"]["file"]
    with np.load(inputs_path) as f:
        parity_x, parity_labels = f["input"], f["labels"]
    expected_x, expected_labels = parity_inputs(data, input_cfg, int(settings["parity_inputs"]["count"]))
    if not (np.array_equal(parity_x, expected_x) and np.array_equal(parity_labels, expected_labels)):
        raise AssertionError(f"{inputs_path} does not match the training preprocessing")
    print(f"verified {inputs_path.name}: input {parity_x.shape} {parity_x.dtype}, "
          f"labels {parity_labels.shape} {parity_labels.dtype}")

    for spec in settings["models"]:
        if spec["name"] not in names:
            continue
        path = out_dir / f"{spec['name']}.pth"
        model, ckpt = load_checkpoint_model(path, spec)
        check_batchnorm_trained(model, spec["name"])
        correct, acc = evaluate(model, test_x, test_labels)
        if acc != ckpt["best_prec1"]:
            raise AssertionError(f"{path.name}: reloaded accuracy {acc} != best_prec1 {ckpt['best_prec1']}")
        recorded = results.get("models", {}).get(spec["name"], {}).get("held_out_accuracy")
        if recorded is not None and recorded != acc:
            raise AssertionError(f"{path.name}: results.json says {recorded}, reloaded model gives {acc}")
        with torch.no_grad():
            parity_pred = model(torch.from_numpy(parity_x)).argmax(1).numpy()
        print(f"verified {path.name}: weights_only load, strict=True, held-out accuracy "
              f"{acc:.2f}% ({correct}/{len(test_x)}) == best_prec1; "
              f"inputs.npz {int((parity_pred == parity_labels).sum())}/{len(parity_labels)} correct")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_results(path: Path) -> dict[str, Any]:
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


def write_results(path: Path, results: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="settings file (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=None,
                        help="digits .npz (default: settings 'data', relative to the settings file)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="output folder (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="NAME", help="train/verify only this model (repeatable)")
    parser.add_argument("--verify-only", action="store_true", help="do not train; re-check existing outputs")
    parser.add_argument("--norm-stats", action="store_true",
                        help="print the training-split mean/std for settings.json and exit")
    args = parser.parse_args(argv)

    settings = load_settings(args.settings)
    torch.set_num_threads(int(settings["training"].get("num_threads", 2)))
    torch.use_deterministic_algorithms(True)
    data = load_digits_npz(args.data or (args.settings.parent / settings["data"]))
    input_cfg = settings["input"]

    if args.norm_stats:
        mean, std = normalisation_stats(data, input_cfg)
        print(f"training split, {input_cfg['size']}x{input_cfg['size']} in [0, 1]: mean {mean:.4f} std {std:.4f}")
        return

    all_names = [m["name"] for m in settings["models"]]
    names = args.only or all_names
    unknown = sorted(set(names) - set(all_names))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; settings.json has {all_names}")

    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    results = read_results(results_path)

    if not args.verify_only:
        inputs_path = out_dir / settings["parity_inputs"]["file"]
        x, labels = parity_inputs(data, input_cfg, int(settings["parity_inputs"]["count"]))
        np.savez_compressed(inputs_path, input=x, labels=labels)
        print(f"wrote {inputs_path.name}: input {x.shape} {x.dtype}, labels {labels.tolist()}")

        results.setdefault("models", {})
        for spec in settings["models"]:
            if spec["name"] not in names:
                continue
            run = train_one(spec, settings, data)
            path = out_dir / f"{spec['name']}.pth"
            torch.save(make_checkpoint(run["model"], run["optimizer"], spec["arch"], run["epoch"],
                                       run["held_out_accuracy"]), path)
            results["models"][spec["name"]] = {
                "arch": spec["arch"], "options": spec["options"], "checkpoint": path.name,
                "epoch": run["epoch"], "held_out_accuracy": run["held_out_accuracy"],
                "held_out_correct": run["held_out_correct"], "held_out_total": run["held_out_total"],
                "train_seconds": run["train_seconds"], "size_bytes": path.stat().st_size,
                "sha256": sha256(path),
            }
            print(f"[{spec['name']}] saved {path.name} ({path.stat().st_size:,} bytes), "
                  f"held-out accuracy {run['held_out_accuracy']:.2f}%", flush=True)
        # Keep results in settings order, whichever subset this run trained.
        results["models"] = {n: results["models"][n] for n in all_names if n in results["models"]}
        results["inputs"] = {"file": inputs_path.name, "size_bytes": inputs_path.stat().st_size,
                             "shape": list(x.shape), "dtype": "float32", "labels": labels.tolist(),
                             "size": input_cfg["size"], "channels": input_cfg["channels"],
                             "mean": input_cfg["mean"], "std": input_cfg["std"]}
        results["environment"] = {"torch": torch.__version__, "numpy": np.__version__,
                                  "num_threads": torch.get_num_threads()}
        write_results(results_path, results)
        print(f"wrote {results_path.name}")

    verify(settings, data, out_dir, names, results)


if __name__ == "__main__":
    main()
