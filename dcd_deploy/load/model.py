"""Build the right network for a checkpoint and load it (strictly)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError, CheckpointError
from ..zoo.registry import get_arch
from .archinfer import (
    build_uninitialised,
    check_given_architecture,
    guess_architecture,
    infer_architecture,
    options_text,
    shape_mismatch,
)
from .checkpoint import Checkpoint, load_checkpoint


@dataclasses.dataclass
class LoadedModel:
    """A network in eval mode with its weights, and how it was chosen."""

    model: nn.Module
    arch: str  # registry name, or 'custom:package.module:factory'
    options: dict[str, Any]
    inferred: bool
    notes: list[str]
    checkpoint: Checkpoint

    def describe(self) -> str:
        how = "inferred from the checkpoint" if self.inferred else "as given"
        return f"{self.arch} ({options_text(self.options)}) {how}"


def parse_model_args(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` strings to keyword arguments, values read as Python literals when they parse."""
    import ast

    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ArchitectureError(f"--model-arg {pair!r} is not key=value.", "Write it as e.g. --model-arg num_classes=10.")
        try:
            args[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args[key] = value
    return args


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """Import ``package.module:factory`` (the current folder is searched too, as ``python -m`` does)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ArchitectureError(f"--model {spec!r} is not of the form package.module:factory.",
                                "Example: --model mynet.models:build_net.")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(
            f"Cannot import {module_name!r} for --model {spec} ({exc}).",
            "Install the package, or run from the folder that contains it (or add that folder to PYTHONPATH).",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while being imported
        raise ArchitectureError(
            f"Importing {module_name!r} for --model {spec} failed with {type(exc).__name__}: {exc}.",
            "Fix the error in that module (run `python -c 'import " + module_name + "'` to see where it is).",
        ) from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ArchitectureError(f"Module {module_name!r} has no attribute {attr!r}.",
                                    "Check the name after the colon in --model.")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ArchitectureError(f"{spec} is not callable.", "--model must name a function or class that returns an nn.Module.")
    return factory


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load ``sd`` into ``model`` with ``strict=True``, naming the first difference when it does not fit."""
    problem = shape_mismatch({k: v.shape for k, v in model.state_dict().items()}, sd)
    if problem:  # the counts of missing and unexpected keys are part of ``problem``
        raise CheckpointError(
            f"The checkpoint does not fit {what}: {problem}.",
            "Make sure the checkpoint and the network come from the same training run and options.",
        )
    model.load_state_dict(sd, strict=True)


def _load_custom(ckpt: Checkpoint, model_factory: str | Callable[..., nn.Module], model_args: dict[str, Any],
                 options: dict[str, Any]) -> LoadedModel:
    """``--model package.module:factory``: the user's own network, built from ``model_args``."""
    factory = resolve_factory(model_factory) if isinstance(model_factory, str) else model_factory
    name = model_factory if isinstance(model_factory, str) else getattr(factory, "__qualname__", repr(factory))
    if options:
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise ArchitectureError(
            f"{flags} set options of registered architectures, not of --model {name}.",
            "Pass your factory's arguments with --model-arg, e.g. --model-arg num_classes=10.",
        )
    try:
        model = factory(**model_args)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed on the arguments given
        raise ArchitectureError(
            f"Calling {name}({', '.join(f'{k}={v!r}' for k, v in model_args.items())}) failed with "
            f"{type(exc).__name__}: {exc}.",
            "Check the --model-arg values against its signature.",
        ) from None
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{name} returned a {type(model).__name__}, not an nn.Module.", "--model must build the network.")
    load_state_dict_strict(model, ckpt.state_dict, f"the network built by {name}")
    return LoadedModel(model.eval(), f"custom:{name}", dict(model_args), False, [], ckpt)


def _load_pickled(ckpt: Checkpoint, model: nn.Module) -> LoadedModel:
    """``model``, the whole module unpickled from the file (``--trust-pickle``), used as it is."""
    notes = [f"the whole module ({type(model).__module__}.{type(model).__qualname__}) was unpickled from the checkpoint"]
    try:
        fit = infer_architecture(ckpt.state_dict)
        notes.append(f"its weights fit {fit.arch} ({options_text(fit.options)})")
    except ArchitectureError:
        pass
    return LoadedModel(model.eval(), f"pickled:{type(model).__qualname__}", {}, False, notes, ckpt)


def _given_architecture(sd: dict[str, torch.Tensor], arch: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``--arch`` given: the options given, the others read from the file (else defaults), checked."""
    spec = get_arch(arch)
    given = set(options)
    notes: list[str] = []
    try:
        guess = guess_architecture(sd)  # unverified: check_given_architecture below names any difference
    except ArchitectureError:
        guess = None
    if guess is not None and guess.arch == arch:
        options = {**{k: v for k, v in guess.options.items() if k not in given}, **options}
        notes = [n for n in guess.notes if n.split("=")[0] not in given]
    options = {**spec.defaults, **options}
    check_given_architecture(sd, arch, options)
    return options, notes


def load_model(
    checkpoint: str | os.PathLike | Checkpoint,
    arch: str | None = None,
    options: dict[str, Any] | None = None,
    model_factory: str | Callable[..., nn.Module] | None = None,
    model_args: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Build the network a checkpoint needs and load its weights strictly; returns it in eval mode.

    With neither ``arch`` nor ``model_factory`` the architecture and its options are inferred.
    With ``arch``, the options given are checked against the file (missing ones are inferred).
    With ``model_factory`` (``package.module:factory`` or a callable), the user's own network is
    built with ``model_args``. A whole pickled module (``trust_pickle``) is used as it is.
    """
    options = dict(options or {})
    if options and arch is None and model_factory is None:  # before reading the file: a usage error
        raise ArchitectureError(f"{', '.join('--' + k.replace('_', '-') for k in options)} given without --arch.",
                                "Pass --arch too, or leave the options out to infer them from the file.")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    if model_factory is not None:
        if arch is not None:
            raise ArchitectureError("Both --arch and --model were given.",
                                    "Use --arch for a registered network, --model for your own.")
        return _load_custom(ckpt, model_factory, dict(model_args or {}), options)
    if model_args:
        raise ArchitectureError("--model-arg was given without --model.",
                                "Use --model-arg only with --model package.module:factory.")
    if ckpt.module is not None and arch is None:
        return _load_pickled(ckpt, ckpt.module)
    if arch is None:
        guess = infer_architecture(ckpt.state_dict)
        arch, options, notes, inferred = guess.arch, guess.options, guess.notes, True
    else:
        options, notes = _given_architecture(ckpt.state_dict, arch, options)
        inferred = False
    saved_arch = ckpt.metadata.get("arch")
    if isinstance(saved_arch, str) and saved_arch != arch:
        notes.append(f"the checkpoint's own 'arch' entry says {saved_arch!r}; its keys and shapes fit {arch}")
    model = build_uninitialised(arch, options)  # every parameter is overwritten by the strict load
    load_state_dict_strict(model, ckpt.state_dict, arch)
    return LoadedModel(model.eval(), arch, options, inferred, notes, ckpt)
