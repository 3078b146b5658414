"""``dcd-deploy bench``: every deployment option of one model, timed side by side, and its reports."""

from .run import NAIVE_EXPORTERS, ROWS, BenchResult, BenchRow, NothingMeasured, Prepared, bench, naive_export

__all__ = ["NAIVE_EXPORTERS", "ROWS", "BenchResult", "BenchRow", "NothingMeasured", "Prepared", "bench", "naive_export"]
