"""What the rewrite did to each dynamic layer: one :class:`LayerRewrite` per layer, in a :class:`RewriteReport`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .family import LayerInfo


@dataclasses.dataclass
class LayerRewrite:
    path: str
    family: str
    kind: str | None
    lowered: bool
    reason: str | None = None
    info: LayerInfo | None = None
    form: str | None = None
    folded_bn: str | None = None
    in_shape: tuple[int, ...] | None = None
    check_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "path": self.path, "family": self.family, "kind": self.kind, "lowered": self.lowered,
            "reason": self.reason, "form": self.form, "folded_bn": self.folded_bn,
            "in_shape": list(self.in_shape) if self.in_shape else None, "check_error": self.check_error,
        }
        if self.info is not None:
            d.update({k: v for k, v in self.info.to_dict().items() if k not in d and k != "names"})
        return d


@dataclasses.dataclass
class RewriteReport:
    """What the rewrite did to each dynamic layer; truthy when every one was lowered."""

    layers: list[LayerRewrite]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def lowered(self) -> list[LayerRewrite]:
        return [layer for layer in self.layers if layer.lowered]

    @property
    def not_lowered(self) -> list[LayerRewrite]:
        return [layer for layer in self.layers if not layer.lowered]

    def __bool__(self) -> bool:
        return not self.not_lowered

    def summary(self) -> str:
        forms: dict[str, int] = {}
        for layer in self.lowered:
            forms[layer.form or layer.kind] = forms.get(layer.form or layer.kind, 0) + 1
        folded = sum(1 for layer in self.lowered if layer.folded_bn)
        text = f"{len(self.lowered)}/{len(self.layers)} dynamic layers lowered"
        if forms:
            text += " (" + ", ".join(f"{n} {k}" for k, n in sorted(forms.items())) + f"; {folded} following BatchNorms folded)"
        for layer in self.not_lowered:
            text += f"; NOT lowered: {layer.path} ({layer.reason})"
        return text

    def layer_table(self) -> str:
        """One row per lowered layer: its path, what it is, and the form it was lowered to."""
        from ..reporting import table

        rows = [(layer.path or "<root>", layer.info.summary() if layer.info else (layer.kind or "?"), layer.form or "-")
                for layer in self.lowered]
        return table(("layer", "as recognised", "form"), rows) if rows else ""

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "layers": [layer.to_dict() for layer in self.layers], "notes": self.notes}
