"""Infer the architecture and its options from a state dict's keys and shapes, and confirm it.

Every zoo module registers a probe next to its factories (``zoo.registry.register_probe``): a key
only its checkpoints have, and a small function that reads the few shapes that decide its
options. This module holds only the generic part: run the probe whose key is in the file, then
confirm its answer by building the network on the ``meta`` device and comparing every key and
shape, so an inference is never taken on trust; and explain any difference in words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError
from ..zoo.registry import Inference, get_arch, probes

__all__ = [
    "Inference", "build_uninitialised", "check_given_architecture", "expected_shapes", "format_options",
    "guess_architecture", "infer_architecture", "init_skipped", "options_text", "shape_mismatch",
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


INCOMPLETE_FIX = (
    "The file is incomplete, has extra entries, or was saved from a modified network: re-save it from the "
    "full model, or build the modified network with --model package.module:factory."
)


def options_text(options: dict[str, Any]) -> str:
    """``width_mult=0.5, num_classes=10``: options as a person reads them."""
    return ", ".join(f"{k}={v}" for k, v in options.items())


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

    ``None`` when no registered probe's signature key is in ``sd``; :class:`ArchitectureError` when
    one is but its options cannot be read. :func:`infer_architecture` verifies the guess.
    """
    for probe in probes():
        if probe.signature_key in sd:
            try:
                return probe.infer(sd)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                # The signature key is there but a key or shape the family always has is not.
                raise ArchitectureError(
                    f"The checkpoint has '{probe.signature_key}' like a registered DCD network, but not the rest of "
                    f"one ({type(exc).__name__}: {exc}).",
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
            f"The checkpoint looks like {result.arch} ({options_text(result.options)}) but does not fit it: {problem}.",
            INCOMPLETE_FIX,
        )
    return result


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
        f"The checkpoint does not match {spec.name} ({options_text({**spec.defaults, **options})}): {problem}.", hint
    )
