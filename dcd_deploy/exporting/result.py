"""What an export did, as objects that render themselves and write their own JSON."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..lowering import RewriteReport
    from .quantize import Int8Check

# Self-check thresholds on max|ort − torch| / max|torch| against the ORIGINAL PyTorch model. Float16
# keeps an 11-bit mantissa (~5e-4 per rounding) and the error compounds over ~50 layers.
SELF_CHECK_RTOL = {"float32": 1e-4, "float16": 5e-2}


@dataclasses.dataclass
class SelfCheck:
    """The exported graph on ONNX Runtime CPU against the original model; truthy when it passed."""

    errors: dict[int, float]  # batch size -> max relative error
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        parts = ", ".join(f"batch {b}: {e:.2e}" for b, e in self.errors.items())
        verdict = "PASS" if self.passed else "FAIL"
        return (f"self-check on ONNX Runtime CPU vs original PyTorch: max relative error {parts} "
                f"(tolerance {self.tolerance:.0e}) {verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {"errors": {str(b): e for b, e in self.errors.items()}, "tolerance": self.tolerance,
                "passed": self.passed}


@dataclasses.dataclass
class ExportResult:
    """The written file and how it was made; truthy when every layer was lowered and the self-check
    (if run) passed. It also reads as its rewrite report (``result.layers``)."""

    path: Path
    report: RewriteReport
    metadata: dict[str, str]
    self_check: SelfCheck | Int8Check | None  # Int8Check: the accuracy-style check of an int8 export
    ops: dict[str, int]
    timings: dict[str, float]
    warnings: list[str]

    @property
    def node_count(self) -> int:
        return sum(self.ops.values())

    @property
    def layers(self):
        return self.report.layers

    def __bool__(self) -> bool:
        return bool(self.report) and (self.self_check is None or bool(self.self_check))

    def summary(self) -> str:
        """One line: the rewrite and the self-check's verdict."""
        verdict = "" if self.self_check is None else f"; self-check {'PASS' if self.self_check else 'FAIL'}"
        return f"{self.report.summary()}{verdict}"

    def render(self, layers: bool = False) -> str:
        """What the command line prints: warnings, the rewrite (with ``layers``, each layer's form), the
        graph, the self-check, the file."""
        top = ", ".join(f"{n} {op}" for op, n in list(self.ops.items())[:6])
        lines = [f"warning: {note}" for note in self.warnings]
        lines.append(f"rewrite: {self.report.summary()}")
        if layers and self.report.lowered:
            lines += ["  " + line for line in self.report.layer_table().splitlines()]
        lines += [f"graph:   {self.node_count} nodes ({top}{', ...' if len(self.ops) > 6 else ''})"]
        if self.self_check is not None:
            lines.append(self.self_check.summary())
        lines.append(f"wrote {self.path} in {self.timings.get('total_s', 0.0):.1f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"path": os.fspath(self.path), "summary": self.summary(), "rewrite": self.report.to_dict(),
                "ops": self.ops, "node_count": self.node_count,
                "self_check": None if self.self_check is None else self.self_check.to_dict(),
                "timings_s": self.timings, "warnings": self.warnings, "metadata": self.metadata}

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` at once or not at all (``--report``)."""
        from ..reporting import to_json, write_output

        return write_output(path, to_json(self.to_dict()), "--report")
