"""``benchmarks/serve_load.py`` (the BENCHMARKS.md "Serving" table) runs and reports every figure, at toy size.

Timings are not asserted (they belong to the benchmark): every level is measured without errors,
the server exits 0 on SIGTERM, and the ratios to ONNX Runtime direct are computed from the same run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


def test_serve_load_at_toy_size(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module
    spec.loader.exec_module(module)
    out = tmp_path / "serve.json"
    assert module.main(["--models", "mobilenetv2_dcd", "--size", "32", "--modes", "local", "--max-batches", "4,1",
                        "--concurrency", "1,3", "--duration", "0.3", "--rounds", "2", "--ort-runs", "4", "--threads", "1",
                        "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    entry = data["models"]["mobilenetv2_dcd"]
    rows = entry["servers"]
    assert [(r["max_batch"], r["concurrency"]) for r in rows] == [(4, 1), (4, 3), (1, 1), (1, 3)]
    for row in rows:
        assert row["errors"] == 0 and row["answered"] > 0 and row["exit_code"] == 0 and len(row["rounds"]) == 2
        assert len(row["preferred_batch"]) == 2  # each round's server chose (auto) within its max batch
        assert all(p[0] in (1, 2, 4)[:row["max_batch"].bit_length()] for p in row["preferred_batch"])
        for one in row["rounds"]:  # each round is compared with the ONNX Runtime measurement just before it
            assert set(one["ort"]["throughput"]) == {"1", "2", "4", "8", "16"} and one["ort"]["batch1_p50_ms"] > 0
            assert one["vs_ort_best"] == one["throughput"] / one["ort"]["best_throughput"]
            assert one["p50_minus_ort_b1_ms"] == one["p50"] - one["ort"]["batch1_p50_ms"]
        assert min(r["throughput"] for r in row["rounds"]) <= row["throughput"] <= max(r["throughput"] for r in row["rounds"])
    assert "×ort best" in capsys.readouterr().out
