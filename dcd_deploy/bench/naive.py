"""The ``naive`` row: a plain ``torch.onnx.export`` of the original network, as a user would write it.

``dynamo=True`` first (the exporter torch recommends), then ``dynamo=False`` (TorchScript) if
that fails; the row says which exporter produced the graph and why an earlier one failed, or why
both failed. The exporters' own printing (Python and C++) is silenced
(:func:`dcd_deploy.exporting.quiet.quiet`): a failure is a finding for the report, not terminal output.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import raise_if_interrupted, summarize_exception
from ..exporting.quiet import quiet
from .settings import NAIVE_EXPORTERS

EXPORTERS = ("dynamo", "torchscript")


def _export_once(model: nn.Module, example: torch.Tensor, exporter: str) -> bytes:
    """One exporter's ONNX bytes, batch axis dynamic; raises whatever the exporter raises."""
    if exporter == "dynamo":
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
        return program.model_proto.SerializeToString()
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


def naive_export(model: nn.Module, hw: tuple[int, int], exporters: Sequence[str] = NAIVE_EXPORTERS["auto"]
                 ) -> tuple[bytes | None, str | None, str | None]:
    """Plain ``torch.onnx.export`` with a dynamic batch axis, as a user would write it.

    Tries each exporter in turn (``dynamo``: ``dynamo=True``; ``torchscript``: ``dynamo=False``)
    and returns ``(onnx bytes or None, note, failure)``: the note says which exporter produced the
    graph (and why an earlier one failed); the failure says why every exporter failed.
    """
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown exporter(s) {unknown}; use 'dynamo' and/or 'torchscript'")
    example = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))  # batch 2: not specialised
    model = model.eval()
    failures: list[str] = []
    for exporter in exporters:
        try:
            with quiet():
                data = _export_once(model, example, exporter)
        except Exception as exc:  # noqa: BLE001 - every exporter failure is a finding for the report
            raise_if_interrupted()  # torch.export can turn a Ctrl-C into an error of its own
            failures.append(f"torch.onnx.export(dynamo={exporter == 'dynamo'}) failed: {summarize_exception(exc)}")
            continue
        note = f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
        if failures:
            note += " after " + "; ".join(failures)
        return data, note, None
    return None, None, "; ".join(failures)


__all__ = ["NAIVE_EXPORTERS", "naive_export"]
