"""bench with one batch size adds the export for that batch only (static-batch forms), with its error."""

from __future__ import annotations

from dcd_deploy.bench import bench
from dcd_deploy.bench.results import BATCH_ROW, ROWS

SIZE = 48  # conftest's small_model: the sample models' mobilenetv2_dcd w0.35 at 48×48


def test_one_batch_size_adds_the_batch_specific_row_with_its_error(small_model):
    result = bench(small_model, providers="cpu", batches=(2,), input_size=SIZE, threads=1, warmup=1, runs=3,
                   naive_exporter="torchscript")
    rows = {r.row: r for r in result.rows}
    assert set(rows) == {*ROWS, BATCH_ROW}
    row = rows[BATCH_ROW]
    assert row.status == "measured" and row.batch == 2, row.reason
    assert row.max_rel_err is not None and row.max_rel_err < 1e-4
    note = next(p.note for p in result.prepared if p.row == BATCH_ROW)
    assert "batch 2 only" in note and "grouped" in note
    assert BATCH_ROW in result.to_dict()["row_descriptions"]


def test_several_batch_sizes_have_no_batch_specific_row(small_model):
    result = bench(small_model, providers="cpu", batches=(1, 2), input_size=SIZE, threads=1, warmup=1, runs=2,
                   naive_exporter="torchscript")
    assert BATCH_ROW not in {r.row for r in result.rows}
