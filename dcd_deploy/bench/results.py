"""What a bench run found: each row's artifact (:class:`Prepared`), each measurement (:class:`BenchRow`)
and the whole run (:class:`BenchResult`), each writing its own JSON (``to_dict``).

The terminal table, Markdown and HTML renderings of a result are in :mod:`dcd_deploy.bench.report`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import NothingMeasured, ProviderUnavailableError
from ..runtime.timing import LatencyStats

if TYPE_CHECKING:
    from torch import nn

ROWS = ("eager", "eager-lowered", "naive", "dcd-deploy", "static")  # every checkpoint run's rows
BATCH_ROW = "dcd-deploy-batch"  # also, when the run has one batch size: the export for that batch only
INT8_ROWS = ("int8", "int8-static")  # also, with calibration data: the int8 exports (error column: int8 check)
ROW_DESCRIPTIONS = {
    "eager": "PyTorch eager, original network",
    "eager-lowered": "PyTorch eager, network after dcd-deploy lowering",
    "naive": "plain torch.onnx.export of the original network, on ONNX Runtime",
    "dcd-deploy": "dcd-deploy export, on ONNX Runtime",
    "dcd-deploy-batch": "dcd-deploy export for the one --batch given (static-batch forms; the file runs at that "
                        "batch only), on ONNX Runtime",
    "static": "static twin (W0 only, plain Linear head), on ONNX Runtime: the floor",
    "onnx": "the given ONNX file, on ONNX Runtime",
    "int8": "dcd-deploy export in int8 (factored form, static convolutions quantized, calibrated on --calibration), "
            "on ONNX Runtime; its error is top-1 agreement and logit cosine with the original network",
    "int8-static": "static twin in int8 (quantized the same way): the int8 floor; its error is against the float32 "
                   "static twin",
}
TORCH_ROWS = ("eager", "eager-lowered")


@dataclasses.dataclass
class Prepared:
    """One row's artifact, made once: a PyTorch module or ONNX bytes/file, or why it failed."""

    row: str
    model: nn.Module | None = None
    onnx: bytes | str | None = None  # serialized model, or a path to it
    seconds: float | None = None
    note: str | None = None
    failure: str | None = None
    int8: Any | None = None  # int8 rows: the Int8Check against the float32 network they were quantized from

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "seconds": self.seconds, "note": self.note, "failure": self.failure,
                **({"int8": self.int8.to_dict()} if self.int8 is not None else {})}


@dataclasses.dataclass
class BenchRow:
    """One row for one provider and batch size: its measurement, or why there is none."""

    row: str
    provider: str  # short name: cpu, cuda, ...
    batch: int
    status: str = "measured"  # measured | skipped (provider/device unavailable) | failed
    reason: str | None = None
    setup_s: float | None = None
    cold_s: float | None = None
    stats: LatencyStats | None = None
    vs_static: float | None = None  # p50 / static p50 (same provider and batch)
    vs_eager: float | None = None  # p50 / eager p50 (same provider and batch)
    max_rel_err: float | None = None  # output vs the original network, max|Δ| / max|ref|
    unstable: str | None = None  # why the timings are not stable (runtime.timing.instability), else None
    int8: dict[str, Any] | None = None  # int8 rows: Int8Check.to_dict() (agreement, cosine), instead of max_rel_err

    @property
    def measured(self) -> bool:
        return self.stats is not None

    @property
    def key(self) -> str:
        return f"{self.provider} batch {self.batch} {self.row}"

    def error_text(self) -> str:
        """The error column: max relative error, or an int8 row's top-1 agreement and mean logit cosine."""
        if self.int8 is not None:
            return f"agree {self.int8['agreement']:.1%}, cos {self.int8['cosine_mean']:.4f}"
        return "—" if self.max_rel_err is None else f"{self.max_rel_err:.1e}"

    def to_dict(self, include_times: bool = True) -> dict[str, Any]:
        return {
            "row": self.row, "provider": self.provider, "batch": self.batch, "status": self.status,
            "reason": self.reason,
            "session_ms": None if self.setup_s is None else self.setup_s * 1e3,
            "cold_ms": None if self.cold_s is None else self.cold_s * 1e3,
            "stats": self.stats.to_dict(include_times) if self.stats else None,
            "vs_static": self.vs_static, "vs_eager": self.vs_eager, "max_rel_err": self.max_rel_err,
            "int8": self.int8,
            "unstable": self.unstable,
        }


@dataclasses.dataclass
class BenchResult:
    """Everything one bench run found; truthy when at least one row was measured."""

    source: str
    mode: str  # checkpoint | onnx
    model: str
    input_size: tuple[int, int]
    providers: list[str]
    batches: list[int]
    threads: int
    warmup: int
    runs: int | None
    duration: float | None
    cuda_graph: bool
    rows: list[BenchRow]
    prepared: list[Prepared]
    devices: dict[str, str]
    versions: dict[str, str]
    machine: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def measured(self) -> list[BenchRow]:
        return [r for r in self.rows if r.measured]

    def __bool__(self) -> bool:
        return bool(self.measured)

    def groups(self) -> list[tuple[str, int, list[BenchRow]]]:
        """(provider, batch, rows) in report order."""
        out = []
        for provider in dict.fromkeys(r.provider for r in self.rows):
            for batch in self.batches:
                rows = [r for r in self.rows if r.provider == provider and r.batch == batch]
                if rows:
                    out.append((provider, batch, rows))
        return out

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "threads": self.threads, "torch_threads": self.threads, "ort_intra_op_threads": self.threads,
            "ort_inter_op_threads": 1, "ort_spinning": False, "warmup": self.warmup, "runs": self.runs,
            "duration_s": self.duration, "interleaved": True, "cuda_graph": self.cuda_graph,
            "batches": self.batches, "providers": self.providers,
        }

    def to_dict(self, include_times: bool = True) -> dict[str, Any]:
        return {
            "tool": "dcd-deploy bench", "schema": 1, "date": self.machine.get("date"),
            "source": self.source, "mode": self.mode, "model": self.model, "input_size": list(self.input_size),
            "settings": self.settings, "versions": self.versions, "machine": self.machine, "devices": self.devices,
            "row_descriptions": {r: ROW_DESCRIPTIONS[r] for r in dict.fromkeys(x.row for x in self.rows)},
            "preparation": [p.to_dict() for p in self.prepared],
            "rows": [r.to_dict(include_times) for r in self.rows],
            "notes": self.notes,
        }

    def raise_if_nothing_measured(self) -> None:
        """Raise when no row was measured: :class:`ProviderUnavailableError` (exit 3) when every row was
        skipped for want of a provider or device, else :class:`NothingMeasured` (exit 2)."""
        if self:
            return
        if all(r.status == "skipped" for r in self.rows):
            import onnxruntime as ort

            from ..runtime.session import short_name

            offered = ", ".join(short_name(p) for p in ort.get_available_providers())
            raise ProviderUnavailableError(
                f"Nothing could be measured: none of the requested providers ({', '.join(self.providers)}) can run "
                "here (the reasons are listed above).",
                f"Choose providers this machine offers (this onnxruntime offers: {offered}), e.g. --providers cpu.",
            )
        raise NothingMeasured("Nothing could be measured: every row failed (the reasons are listed above).",
                              "Fix the first reason listed; a dcd-deploy export on --providers cpu should always run.")


__all__ = ["BATCH_ROW", "INT8_ROWS", "ROWS", "ROW_DESCRIPTIONS", "TORCH_ROWS", "BenchResult", "BenchRow", "NothingMeasured", "Prepared"]
