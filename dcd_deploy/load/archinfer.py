"""Infer the architecture and its options from a state dict's keys and shapes.

Each family has a small pure function that reads the few shapes that decide its options;
the result is then confirmed by building the network on the ``meta`` device and comparing every
key and shape, so an inference is never taken on trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError
from ..zoo import get_arch
from ..zoo.mobilenetv2 import MOBILENETV2_CFGS, channel_divisor, make_divisible
from ..zoo.resnet import RESNET_DEPTHS, Bottleneck

# Values tried first, so that the answer is the one a person would have typed.
COMMON_WIDTHS = (1.0, 0.5, 0.75, 0.35, 0.25, 1.4, 1.3, 1.25, 1.5, 2.0, 0.1)
FINE_WIDTHS = tuple(round(0.05 * i, 2) for i in range(2, 61))
COMMON_SQUEEZES = (8, 16, 4, 32, 2, 1, 64, 12, 24)


@dataclasses.dataclass
class Inference:
    arch: str
    options: dict[str, Any]
    notes: list[str]


def head_index(sd: dict[str, torch.Tensor]) -> int | None:
    for key in sd:
        m = re.fullmatch(r"classifier\.(\d+)\.cls\.weight", key)
        if m:
            return int(m.group(1))
    return None


def _head_options(sd: dict[str, torch.Tensor], arch: str, notes: list[str]) -> dict[str, Any]:
    idx = head_index(sd)
    if idx is None:
        raise ArchitectureError(
            "The checkpoint has no DCD classifier head (no key 'classifier.<i>.cls.weight').",
            "If the network is your own, build it with --model package.module:factory.",
        )
    num_classes = sd[f"classifier.{idx}.cls.weight"].shape[0]
    default_dropout = get_arch(arch).defaults["dropout"]
    dropout = default_dropout if idx == 1 else 0.0
    notes.append(f"num_classes={num_classes} from classifier.{idx}.cls.weight")
    notes.append(
        f"dropout={'present' if idx == 1 else 'absent'} (head is classifier.{idx}; the rate is not stored and "
        "does not matter at inference)"
    )
    return {"num_classes": num_classes, "dropout": dropout}


def _infer_resnet(sd: dict[str, torch.Tensor]) -> Inference:
    bottleneck = "layer1.0.conv3.conv.weight" in sd
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    for name, (block, layers) in RESNET_DEPTHS.items():
        if (block is Bottleneck) == bottleneck and layers == counts:
            notes = [f"{'Bottleneck' if bottleneck else 'BasicBlock'} blocks per stage {counts}"]
            return Inference(name, _head_options(sd, name, notes), notes)
    raise ArchitectureError(
        f"The checkpoint is a ResNet-DCD with {'Bottleneck' if bottleneck else 'BasicBlock'} blocks "
        f"{counts} per stage, which is no registered architecture.",
        "Build the network yourself with --model package.module:factory.",
    )


def _mobilenet_channels(width: float) -> tuple[int, list[int], int]:
    div = channel_divisor(width)
    stem = make_divisible(32 * width, div)
    outs = [make_divisible(c * width, div) for _, c, n, _ in MOBILENETV2_CFGS for _ in range(n)]
    last = make_divisible(1280 * width, div) if width > 1.0 else 1280
    return stem, outs, last


def _infer_mobilenetv2(sd: dict[str, torch.Tensor]) -> Inference:
    notes: list[str] = []
    stem = sd["features.0.0.weight"].shape[0]
    outs = []
    for i in range(1, 1 + sum(n for _, _, n, _ in MOBILENETV2_CFGS)):
        key = f"features.{i}.conv.6.conv.weight" if f"features.{i}.conv.6.conv.weight" in sd else f"features.{i}.conv.3.weight"
        outs.append(sd[key].shape[0] if key in sd else None)
    last = sd["conv.0.weight"].shape[0] if "conv.0.weight" in sd else None
    found = (stem, outs, last)
    widths = [w for w in dict.fromkeys(COMMON_WIDTHS + FINE_WIDTHS) if _mobilenet_channels(w) == found]
    if not widths:
        raise ArchitectureError(
            f"The checkpoint looks like MobileNetV2-DCD but no width_mult gives its channel counts "
            f"(stem {stem}, blocks {outs}, last {last}).",
            "If the network is your own variant, build it with --model package.module:factory.",
        )
    width = widths[0]
    notes.append(f"width_mult={width} from the channel counts (stem {stem}, last block {outs[-1]})")

    # fc_squeeze: squeeze = max(max(inp*mul, L^2) // fc_squeeze, 4) for every DYModule.
    modules = []
    for key, weight in sd.items():
        m = re.fullmatch(r"(features\.\d+\.conv\.\d+)\.fc\.0\.weight", key)
        if m:
            squeeze, pooled = weight.shape
            dim = sd[f"{m.group(1)}.conv_q.weight"].shape[0]
            modules.append((squeeze, pooled, dim))
    candidates = list(COMMON_SQUEEZES) + [f for f in range(1, 129) if f not in COMMON_SQUEEZES]
    squeezes = [f for f in candidates if all(max(max(p, d * d) // f, 4) == s for s, p, d in modules)]
    if not squeezes:
        raise ArchitectureError(
            "The checkpoint looks like MobileNetV2-DCD but no fc_squeeze gives the widths of its attention layers.",
            "If the network is your own variant, build it with --model package.module:factory.",
        )
    notes.append(f"fc_squeeze={squeezes[0]} from the attention widths (fc.0.weight) of {len(modules)} DYModules")
    options = {"width_mult": width, "fc_squeeze": squeezes[0], **_head_options(sd, "mobilenetv2_dcd", notes)}
    return Inference("mobilenetv2_dcd", options, notes)


FAMILY_PROBES: list[tuple[str, Callable[[dict[str, torch.Tensor]], Inference]]] = [
    ("layer1.0.conv1.conv.weight", _infer_resnet),
    ("features.0.0.weight", _infer_mobilenetv2),
]


def shape_mismatch(expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a network's keys/shapes and a state dict's, in words.

    Keys are compared in the network's order. A missing key is paired with the checkpoint's first
    key the network does not have (usually its counterpart, e.g. ``classifier.0`` vs
    ``classifier.1``), so both shapes are named; the counts of missing and unexpected keys follow.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    counts = []
    if missing:
        counts.append(f"{len(missing)} key{'s' if len(missing) > 1 else ''} missing from the checkpoint")
    if unexpected:
        counts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} in it")
    tail = f" ({', '.join(counts)})" if counts else ""
    for key, shape in expected.items():
        if key not in found:
            text = f"the network expects '{key}' {tuple(shape)}, which the checkpoint lacks"
            if unexpected:
                other = unexpected[0]
                text += f"; the checkpoint has '{other}' {tuple(found[other].shape)} instead"
            return text + tail
        if tuple(found[key].shape) != tuple(shape):
            return f"'{key}' is {tuple(found[key].shape)} in the checkpoint but {tuple(shape)} in the network" + tail
    if unexpected:
        return f"the checkpoint has '{unexpected[0]}' {tuple(found[unexpected[0]].shape)}, which the network lacks" + tail
    return None


def format_options(arch: str, options: dict[str, Any]) -> str:
    """Command-line options that build ``arch`` with ``options``: ``--arch X --width-mult 0.5 ...``."""
    flags = [f"--arch {arch}"] + [f"--{k.replace('_', '-')} {v}" for k, v in options.items()]
    return " ".join(flags)


@contextlib.contextmanager
def init_skipped() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops for the duration.

    Only for networks whose every parameter is then overwritten (a strict load) or never read
    (``meta`` tensors): random initialisation of a large network costs seconds, and on ``meta``
    it even pulls in the compiler stack.
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(nn.init, n))]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def build_uninitialised(arch: str, options: dict[str, Any], device: str | None = None) -> nn.Module:
    """Build ``arch`` with ``options`` without random initialisation (see :func:`init_skipped`)."""
    with init_skipped(), torch.device(device or "cpu"):
        return get_arch(arch).build(**options)


def expected_shapes(arch: str, options: dict[str, Any]) -> dict[str, torch.Size]:
    model = build_uninitialised(arch, options, device="meta")
    return {k: v.shape for k, v in model.state_dict().items()}


def guess_architecture(sd: dict[str, torch.Tensor]) -> Inference | None:
    """The registered architecture and options that ``sd``'s deciding shapes point to, unverified.

    ``None`` when no registered family's probe key is in ``sd``; :class:`ArchitectureError` when
    one is but its options cannot be read. :func:`infer_architecture` verifies the guess.
    """
    for probe, infer in FAMILY_PROBES:
        if probe in sd:
            try:
                return infer(sd)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                # The probe key is there but a key or shape the family always has is not.
                raise ArchitectureError(
                    f"The checkpoint has '{probe}' like a registered DCD network, but not the rest of one "
                    f"({type(exc).__name__}: {exc}).",
                    "If the network is your own, build it with --model package.module:factory.",
                ) from None
    return None


def infer_architecture(sd: dict[str, torch.Tensor]) -> Inference:
    """Infer the registered architecture and options that build a network matching ``sd``."""
    result = guess_architecture(sd)
    if result is None:
        sample = ", ".join(list(sd)[:3])
        raise ArchitectureError(
            f"Cannot tell which DCD architecture this checkpoint holds (first keys: {sample}).",
            "Pass --arch (see `dcd-deploy archs`), or build your own network with --model package.module:factory.",
        )
    problem = shape_mismatch(expected_shapes(result.arch, result.options), sd)
    if problem:
        raise ArchitectureError(
            f"The checkpoint looks like {result.arch} ({_fmt(result.options)}) but does not fit it: {problem}.",
            INCOMPLETE_FIX,
        )
    return result


INCOMPLETE_FIX = (
    "The file is incomplete, has extra entries, or was saved from a modified network: re-save it from the "
    "full model, or build the modified network with --model package.module:factory."
)


def _fmt(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def check_given_architecture(sd: dict[str, torch.Tensor], arch: str, options: dict[str, Any]) -> None:
    """Raise a clear error naming the first differing key when ``arch`` does not fit ``sd``.

    The error suggests the options that would fit, when the file's architecture can be inferred.
    """
    spec = get_arch(arch)
    problem = shape_mismatch(expected_shapes(arch, options), sd)
    if problem is None:
        return
    try:
        guess = infer_architecture(sd)
        hint = (f"The file fits {format_options(guess.arch, guess.options)}: pass those, "
                "or leave out --arch and its options to infer them.")
    except ArchitectureError:
        try:
            unverified = guess_architecture(sd)
        except ArchitectureError:
            unverified = None
        if unverified is not None and unverified.arch == arch and {**spec.defaults, **unverified.options} == options:
            hint = f"These options are the ones the file's shapes point to. {INCOMPLETE_FIX}"
        else:
            hint = ("Check --arch and its options against how the network was trained; if it is your own network, "
                    "build it with --model package.module:factory.")
    raise ArchitectureError(
        f"The checkpoint does not match {spec.name} ({_fmt({**spec.defaults, **options})}): {problem}.", hint
    )
