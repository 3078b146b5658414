"""The registered architectures by name, family and option defaults, read without importing torch.

Each architecture module of the zoo declares its architectures in one module-level literal::

    ARCHITECTURES = {
        "resnet18_dcd": {"family": "resnet", "defaults": {"num_classes": 1000, "dropout": 0.1}},
        ...
    }

and, next to its factories, registers them (``registry.register_arch``) and the probe that reads
their options from a checkpoint (``registry.register_probe``). This module reads the literals from
the modules' source with :mod:`ast`, without running them, so ``dcd-deploy archs`` and ``--help``
need neither torch nor ONNX Runtime. The declaration is the one source of the defaults: a factory
whose signature disagrees with it is refused when it registers.

Adding an architecture is adding one module to the zoo's folder (any folder on the package's
``__path__``): nothing else lists it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import ArchitectureError

DECLARATION = "ARCHITECTURES"


@dataclasses.dataclass(frozen=True)
class ArchEntry:
    """One declared architecture: its name, family, options with their defaults, and its module."""

    name: str
    family: str
    defaults: dict[str, Any]
    module: str  # full dotted name of the zoo module that declares it and registers its factory


def _declaration(path: Path) -> Any:
    """The literal assigned to ``ARCHITECTURES`` at the top level of ``path``, or ``None``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            names = [node.target.id]
        else:
            continue
        if DECLARATION in names:
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                raise TypeError(f"{path}: {DECLARATION} must be a literal (it is read without running the module)") from None
    return None


def _entries(module: str, declared: Any, path: Path) -> list[ArchEntry]:
    if not isinstance(declared, dict):
        raise TypeError(f"{path}: {DECLARATION} must be a dict of name -> {{'family': ..., 'defaults': {{...}}}}")
    entries = []
    for name, spec in declared.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("family"), str) and isinstance(spec.get("defaults"), dict)):
            raise TypeError(f"{path}: {DECLARATION}[{name!r}] needs a 'family' string and a 'defaults' dict")
        entries.append(ArchEntry(name, spec["family"], dict(spec["defaults"]), module))
    return entries


def zoo_modules() -> list[tuple[str, Path]]:
    """``(dotted name, source file)`` of every module in the zoo's folders, in name order."""
    package = sys.modules[__package__]  # the zoo package, initialised before this module
    found: dict[str, Path] = {}
    for folder in package.__path__:
        for path in sorted(Path(folder).glob("*.py")):
            if not path.stem.startswith("_"):
                found.setdefault(path.stem, path)
    return [(f"{__package__}.{stem}", found[stem]) for stem in sorted(found)]


@functools.cache
def catalog() -> dict[str, ArchEntry]:
    """Every declared architecture by name (cached; ``catalog.cache_clear()`` re-reads the folders)."""
    entries: dict[str, ArchEntry] = {}
    for module, path in zoo_modules():
        declared = _declaration(path)
        if declared is None:
            continue
        for entry in _entries(module, declared, path):
            if entry.name in entries:
                raise TypeError(f"architecture {entry.name!r} is declared by both {entries[entry.name].module} and {module}")
            entries[entry.name] = entry
    return entries


def list_archs() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(catalog())


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``resnet18`` before ``resnet101``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def get_entry(name: str) -> ArchEntry:
    """The declaration of ``name``; :class:`ArchitectureError` naming the valid ones if there is none."""
    try:
        return catalog()[name]
    except KeyError:
        raise ArchitectureError(
            f"Unknown architecture {name!r}.",
            f"Choose one of: {', '.join(list_archs())}; or build your own network with "
            "--model package.module:factory.",
        ) from None
