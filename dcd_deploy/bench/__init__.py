"""``dcd-deploy bench``: every deployment option of one model, timed side by side, and its reports.

``settings`` (defaults, validated settings) → ``artifacts`` (each row made once; ``naive`` is the
plain torch.onnx.export row) → ``run`` (:func:`bench`: runners timed interleaved) → ``results``
(:class:`BenchResult`) → ``report`` (table, JSON, Markdown, HTML). Names are imported lazily, so
reading the settings does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "bench": "run",
    "bench_settings": "run",
    "BenchSettings": "settings",
    "NAIVE_EXPORTERS": "settings",
    "naive_export": "naive",
    "ROWS": "results",
    "BenchResult": "results",
    "BenchRow": "results",
    "Prepared": "results",
    "NothingMeasured": "results",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
