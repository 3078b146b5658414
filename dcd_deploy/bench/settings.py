"""What one bench run measures and how: the validated settings, and the defaults the command line shows.

Imports nothing heavy (no torch, no ONNX Runtime), so the command line can take its option
defaults from here at start-up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DEFAULT_INPUT_SIZE = 224
DEFAULT_WARMUP = 10
DEFAULT_RUNS = 100
# Exporters the naive row tries, in order: 'dynamo' is torch.onnx.export(dynamo=True), 'torchscript' dynamo=False.
NAIVE_EXPORTERS = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}
DEFAULT_NAIVE_EXPORTER = "auto"


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """The settings of one bench run, already checked (see :func:`dcd_deploy.bench.run.bench`).

    ``providers`` are full ONNX Runtime names; exactly one of ``runs`` and ``duration`` is set.
    """

    providers: tuple[str, ...]
    batches: tuple[int, ...]
    threads: int
    warmup: int = DEFAULT_WARMUP
    runs: int | None = DEFAULT_RUNS
    duration: float | None = None
    cuda_graph: bool = False
    naive_exporter: str = DEFAULT_NAIVE_EXPORTER
    target: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["DEFAULT_INPUT_SIZE", "DEFAULT_NAIVE_EXPORTER", "DEFAULT_RUNS", "DEFAULT_WARMUP", "NAIVE_EXPORTERS",
           "BenchSettings"]
