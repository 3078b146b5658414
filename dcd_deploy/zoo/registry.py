"""Architecture registry: each network registers a factory by name; tests list them."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ArchitectureError


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str
    factory: Callable[..., nn.Module]
    defaults: dict[str, Any]
    # Options this architecture accepts (its factory's keyword arguments).

    def build(self, **options: Any) -> nn.Module:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ArchitectureError(
                f"Architecture {self.name!r} has no option {', '.join(map(repr, unknown))}.",
                f"Its options are: {', '.join(sorted(self.defaults))}.",
            )
        return self.factory(**{**self.defaults, **options})


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(name: str, family: str):
    """Decorator: register ``factory`` under ``name``; its keyword defaults are the options."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(factory).parameters
        defaults = {k: p.default for k, p in params.items()}
        _REGISTRY[name] = ArchSpec(name, family, factory, defaults)
        return factory

    return wrap


def list_archs() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArchitectureError(
            f"Unknown architecture {name!r}.",
            f"Choose one of: {', '.join(list_archs())}; or build your own network with "
            "--model package.module:factory.",
        ) from None


def create_model(name: str, **options: Any) -> nn.Module:
    return get_arch(name).build(**options)
