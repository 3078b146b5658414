"""What a parity run found, per provider and as a whole: verdicts, the table, the JSON report.

:class:`ParityResult` is truthy when every provider passed every output; it renders the
terminal report (:meth:`~ParityResult.render`), writes its own JSON (:meth:`~ParityResult.to_dict`,
schema ``dcd-deploy/parity/1``) and says, when it failed, what to do next
(:meth:`~ParityResult.failure`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParityFailure
from ..reporting import json_safe, table, to_json, write_output
from ..runtime.inputs import InputSet
from ..runtime.onnxfile import InputSpec
from ..runtime.session import short_name
from .localize import Localization
from .metrics import OutputComparison
from ..runtime.float64 import NOISE_FACTOR
from .tolerance import Tolerance

SCHEMA = "dcd-deploy/parity/1"
TABLE_HEADER = ["provider", "output", "max abs", "max rel", "mean abs", "cos min", "top-1", "top-5",
                "NaN/Inf", "tolerance (atol + rtol·|ref|)", "min atol", "min rtol", "verdict"]


@dataclasses.dataclass
class ProviderResult:
    provider: str  # full ONNX Runtime name
    device: str
    options: dict[str, str]  # effective options, as ONNX Runtime reports them
    requested_options: dict[str, Any]  # what dcd-deploy and the user set
    precision: str  # what the provider computes in: float32 | float16 | tf32
    precision_note: str | None
    tolerance: Tolerance
    outputs: list[OutputComparison]
    run_s: float

    @property
    def short(self) -> str:
        return short_name(self.provider)

    @property
    def passed(self) -> bool:
        return all(self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def describe(self) -> str:
        """One line: the provider, its device, the options asked for and the precision it computes in."""
        opts = ", ".join(f"{k}={v}" for k, v in self.requested_options.items())
        return (f"{self.short}: {self.provider} on {self.device}" + (f" [{opts}]" if opts else "")
                + f"; computes in {self.precision}" + (f" ({self.precision_note})" if self.precision_note else ""))

    def rows(self) -> list[list[str]]:
        """One table row per output."""
        rows = []
        for o in self.outputs:
            top1 = "-" if o.top1_agreement is None else f"{round(o.top1_agreement * o.samples)}/{o.samples}"
            top5 = "-" if o.top5_overlap is None else f"{100 * o.top5_overlap:.0f}%"
            cos = "-" if o.cosine_min is None else f"{o.cosine_min:.6f}"
            rows.append([self.short, o.name, _e(o.max_abs_error), _e(o.max_rel_error), _e(o.mean_abs_error), cos,
                         top1, top5, f"{o.nan}/{o.inf}", f"{o.atol:.1e} + {o.rtol:.1e}·|ref|",
                         _e(o.min_atol), _e(o.min_rtol), "PASS" if o else "FAIL"])
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.short, "provider": self.provider, "device": self.device, "passed": self.passed,
            "options": self.options, "requested_options": self.requested_options,
            "precision": self.precision, "precision_note": self.precision_note,
            "tolerance": self.tolerance.to_dict(), "outputs": [o.to_dict() for o in self.outputs], "run_s": self.run_s,
        }


def _e(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}e}"


@dataclasses.dataclass
class ParityResult:
    """Everything one parity run found; truthy when every provider passed every output."""

    model_path: Path
    model_precision: str
    input: InputSpec
    inputs: InputSet
    batch: int
    reference: dict[str, Any]
    providers: list[ProviderResult]
    notes: list[str] = dataclasses.field(default_factory=list)
    localizations: list[Localization] = dataclasses.field(default_factory=list)
    saved_io: dict[str, str] | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    localized: bool = False  # --localize was asked for

    @property
    def passed(self) -> bool:
        return bool(self.providers) and all(self.providers)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[tuple[ProviderResult, OutputComparison]]:
        return [(p, o) for p in self.providers for o in p.outputs if not o]

    def summary(self) -> str:
        names = ", ".join(p.short for p in self.providers)
        if self.passed:
            return f"PASS: ONNX Runtime ({names}) matches the original PyTorch model on {self.inputs.count} samples."
        parts = [f"{p.short}/{o.name}: {o.reason()}" for p, o in self.failures]
        return "FAIL: " + "; ".join(parts) + "."

    def render(self) -> str:
        ref = self.reference
        arch = ref.get("arch") or "a PyTorch model"
        if ref.get("options"):
            arch += " (" + ", ".join(f"{k}={v}" for k, v in ref["options"].items()) + ")"
        src = f" from {ref['checkpoint']}" if ref.get("checkpoint") else ""
        lines = [
            f"parity: {self.model_path} ({self.model_precision} model, input {self.input.describe()})",
            f"reference: original PyTorch {arch}{src}, evaluated in {ref['dtype']}",
            f"inputs: {self.inputs.describe()}; batch {self.batch}",
            *(f"  {p.describe()}" for p in self.providers),
            "", table(TABLE_HEADER, [row for p in self.providers for row in p.rows()]), "",
            *(f"{p.short}/{o.name} {o.allowance()} (default tolerance: rtol and atol/max|ref| are "
              f"max(the {p.precision} default, {NOISE_FACTOR:g} × the original's float32 error against float64))"
              for p in self.providers for o in p.outputs if o.allowance()),
            *(f"note: {note}" for note in self.notes),
        ]
        for loc in self.localizations:
            lines += [loc.render(), ""]
        lines.append(self.summary())
        return "\n".join(lines)

    def failure(self) -> ParityFailure | None:
        """The error a failed run stands for, with what to try next; None when it passed."""
        if self.passed:
            return None
        hint = ("Re-export the model from this checkpoint with `dcd-deploy export`"
                + ("" if self.localized else ", or run again with --localize to find the first diverging DCD layer")
                + "; if the difference is expected (e.g. a float16 model), set --atol/--rtol.")
        tf32 = sorted({p.short for p, _ in self.failures if p.precision == "tf32"})
        if tf32:  # TF32 rounding in deep networks can exceed the tf32 default: say how to tell it from a bug
            hint = (f"{', '.join(tf32)} computed float32 convolutions in TF32 (10 mantissa bits). Run again with "
                    + " ".join(f"--provider-option {p}:use_tf32=0" for p in tf32)
                    + ": if that passes, the export is right and the difference is TF32 rounding (deploy with "
                    "use_tf32=0 or accept it with --atol/--rtol); if it fails too, " + hint[0].lower() + hint[1:])
        return ParityFailure("Parity failed: the ONNX model does not compute what the trained model computes "
                             f"({', '.join(f'{p.short}/{o.name}' for p, o in self.failures)}).", hint)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "schema": SCHEMA, "passed": self.passed, "verdict": "pass" if self.passed else "fail",
            "summary": self.summary(),
            "model": {"path": str(self.model_path), "precision": self.model_precision,
                      "input": {"name": self.input.name, "shape": list(self.input.shape),
                                "dtype": np.dtype(self.input.dtype).name},
                      "metadata": self.reference.get("onnx_metadata", {})},
            "reference": {k: v for k, v in self.reference.items() if k != "onnx_metadata"},
            "inputs": {**self.inputs.to_dict(), "batch": self.batch},
            "providers": [p.to_dict() for p in self.providers],
            "localization": [loc.to_dict() for loc in self.localizations] or None,
            "saved_io": self.saved_io, "notes": self.notes, "versions": self.versions, "machine": self.machine,
        })

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (no half-written file on an error or Ctrl-C)."""
        return write_output(path, self.to_json(), "--json report")
