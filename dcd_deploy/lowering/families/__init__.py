"""Every dynamic-layer family, one module each; importing this package registers them all.

A module here defines a :class:`~dcd_deploy.lowering.family.LayerFamily` subclass decorated with
:func:`~dcd_deploy.lowering.family.register_family`; :func:`discover` imports every module of the
package's path (alphabetical order, which is also the order families are tried in).
"""

from __future__ import annotations

import importlib
import pkgutil


def discover() -> list[str]:
    """Import every family module of this package (idempotent); return their names."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


discover()
