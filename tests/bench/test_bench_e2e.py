"""The naive row as users get it by default: torch.onnx.export(dynamo=True) (slow: about a minute)."""

from __future__ import annotations

import pytest

from dcd_deploy.bench.run import bench

pytestmark = pytest.mark.e2e


def test_default_naive_export_is_measured_and_agrees(small_model):
    result = bench(small_model, batches=[2], input_size=48, threads=1, warmup=1, runs=2)
    rows = {r.row: r for r in result.rows}
    naive = rows["naive"]
    assert naive.measured, naive.reason
    assert naive.max_rel_err < 1e-4
    assert "dynamo=True" in next(p.note for p in result.prepared if p.row == "naive")
    assert all(r.measured for r in result.rows)
