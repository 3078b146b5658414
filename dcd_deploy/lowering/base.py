"""What every dynamic-layer family provides, and the records the rewrite report is made of.

A family (one module per family, see ``dcd_conv.py`` and ``dcd_head.py``) declares:

* ``looks_dynamic(module)``: cheap structural hint (an attribute only dynamic layers have);
* ``match(module)``: a :class:`LayerInfo` when the module has every part the lowering needs,
  else a :class:`Mismatch` naming what is missing or unexpected;
* ``lower(module, info, follow_bn, options)``: the static replacement module.

Recognition is structural: users copy the reference layer code into their own projects under
other class names, so class identity proves nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from torch import nn


@dataclasses.dataclass
class LayerInfo:
    """A recognised dynamic layer: its kind and sizes."""

    family: str
    kind: str  # conv_dy | conv_basic_dy | DYModule | DYCls
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    latent: int
    squeeze: int
    pool: int | None  # output size of the attention pool (1 or 2); None for the head
    names: dict[str, str]  # role -> attribute name (e.g. {'q': 'conv_q'})

    def summary(self) -> str:
        pool = f", pool {self.pool}×{self.pool}" if self.pool else ""
        k = f"{self.kernel}×{self.kernel}/{self.stride}" if self.family == "dcd_conv" else "linear"
        return f"{self.kind} {self.c_in}→{self.c_out} {k}, L={self.latent}{pool}"


@dataclasses.dataclass
class Mismatch:
    """Why a module that looks dynamic cannot be lowered."""

    family: str
    reason: str

    def __bool__(self) -> bool:  # a mismatch is never a match
        return False


class LayerFamily(Protocol):
    name: str

    def looks_dynamic(self, module: nn.Module) -> bool: ...

    def match(self, module: nn.Module) -> LayerInfo | Mismatch: ...

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None, options: Any) -> nn.Module: ...


FAMILIES: list[LayerFamily] = []


def register_family(cls: type) -> type:
    """Class decorator: register one instance of the family."""
    FAMILIES.append(cls())
    return cls


def describe_parts(module: nn.Module, wanted: list[str]) -> str:
    have = [n for n in wanted if hasattr(module, n)]
    return ", ".join(have) if have else "none of the expected parts"
