"""Factories and option probes, registered by the zoo modules against their declarations.

Each zoo module declares its architectures (see ``catalog``) and registers, next to the code
that builds them:

* with :func:`register_arch`, the factory of each declared architecture; its keyword parameters
  must be exactly the declared options (the declaration holds the defaults);
* with :func:`register_probe`, a function that recognises the module's checkpoints by a key only
  they have and reads their architecture and options from keys and shapes, returning an
  :class:`Inference` (unverified: ``load.archinfer`` confirms it on the ``meta`` device).

A module is imported the first time one of its architectures is built or probes are needed.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError
from .catalog import catalog, get_entry


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """A declared architecture with its registered factory."""

    name: str
    family: str
    factory: Callable[..., nn.Module]
    defaults: dict[str, Any]  # the options this architecture accepts, with their defaults

    def build(self, **options: Any) -> nn.Module:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ArchitectureError(
                f"Architecture {self.name!r} has no option {', '.join(map(repr, unknown))}.",
                f"Its options are: {', '.join(sorted(self.defaults))}.",
            )
        return self.factory(**{**self.defaults, **options})


@dataclasses.dataclass
class Inference:
    """An architecture and options read from a state dict, with what was read from where."""

    arch: str
    options: dict[str, Any]
    notes: list[str]


StateDict = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Probe:
    """Recognises one zoo module's checkpoints (``signature_key`` is in them) and reads their options."""

    module: str
    signature_key: str
    infer: Callable[[StateDict], Inference]


_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_PROBES: dict[str, list[Probe]] = {}  # zoo module -> its probes


def _check_signature(name: str, factory: Callable[..., nn.Module], defaults: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if list(params) != list(defaults):
        raise TypeError(f"the factory of {name!r} takes {list(params)}, but {name!r} declares the options {list(defaults)}")
    for key, param in params.items():
        if param.default is not inspect.Parameter.empty and param.default != defaults[key]:
            raise TypeError(f"the factory of {name!r} defaults {key}={param.default!r}; the declaration says {defaults[key]!r}")


def register_arch(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``factory`` builds the declared architecture ``name`` from its options."""
    entry = get_entry(name)

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if factory.__module__ != entry.module:
            raise TypeError(f"{name!r} is declared by {entry.module}, but {factory.__module__} registers its factory")
        _check_signature(name, factory, entry.defaults)
        _FACTORIES[name] = factory
        return factory

    return wrap


def register_probe(signature_key: str) -> Callable[[Callable[[StateDict], Inference]], Callable[[StateDict], Inference]]:
    """Decorator: ``infer(state_dict)`` reads the options of checkpoints that hold ``signature_key``.

    ``infer`` may raise :class:`ArchitectureError` with its own explanation; a ``KeyError``,
    ``IndexError``, ``ValueError`` or ``TypeError`` means a key or shape its networks always have
    is missing, and is reported as such.
    """

    def wrap(infer: Callable[[StateDict], Inference]) -> Callable[[StateDict], Inference]:
        probes = _PROBES.setdefault(infer.__module__, [])
        probes[:] = [p for p in probes if p.signature_key != signature_key]  # a re-imported module replaces its own
        probes.append(Probe(infer.__module__, signature_key, infer))
        return infer

    return wrap


def get_arch(name: str) -> ArchSpec:
    """The declared architecture ``name`` with its factory (importing the module that registers it)."""
    entry = get_entry(name)
    importlib.import_module(entry.module)
    factory = _FACTORIES.get(name)
    if factory is None:
        raise TypeError(f"{entry.module} declares {name!r} but registers no factory for it (register_arch)")
    return ArchSpec(entry.name, entry.family, factory, dict(entry.defaults))


def create_model(name: str, **options: Any) -> nn.Module:
    """Build the registered architecture ``name`` (randomly initialised) with ``options``."""
    return get_arch(name).build(**options)


def probes() -> list[Probe]:
    """The probes of every zoo module that declares architectures, in module order."""
    modules = list(dict.fromkeys(entry.module for entry in catalog().values()))
    found: list[Probe] = []
    for module in sorted(modules):
        importlib.import_module(module)
        found += _PROBES.get(module, [])
    return found
