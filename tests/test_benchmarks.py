"""The committed benchmark commands run and report what BENCHMARKS.md quotes (at toy sizes).

Timings are not asserted (they belong to the benchmarks); what is: the graphs are built, the
dcd-deploy graph matches PyTorch, the floor graph exists and differs from the DCD network, and the
cost-model fit reports every layer and a best fit.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from dcd_deploy.lowering import lower_model
from dcd_deploy.zoo import create_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_static_twin_ratio_with_floor(tmp_path, capsys):
    ratio = _load("static_twin_ratio")
    out = tmp_path / "r.json"
    assert ratio.main(["--models", "mobilenetv2_dcd", "--size", "32", "--batches", "1,2", "--runs", "2", "--no-plain",
                       "--floor", "--form", "auto,merged,cpu:55:20:200000", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("mobilenetv2_dcd", 1), ("mobilenetv2_dcd", 2)]
    # the CPU cost model with its own constants spelled out chooses what auto chooses
    assert rows[0]["forms"]["dcd-deploy"] == rows[0]["forms"]["dcd-deploy[cpu:55:20:200000]"]
    for row in rows:
        res = row["results"]
        assert {"static", "dcd-deploy", "dcd-deploy[merged]", "floor"} <= set(res)
        assert res["dcd-deploy"]["rel_err"] < 1e-4 and res["dcd-deploy[merged]"]["rel_err"] < 1e-4
        assert res["floor"]["rel_err"] > 1e-3  # the low-rank branch is gone: another function
        assert all(r["median_s"] > 0 for r in res.values())
    table = capsys.readouterr().out
    assert "floor ms (ratio)" in table and "| mobilenetv2_dcd | 2 | fp32 |" in table


def test_floor_model_drops_only_the_low_rank_branch():
    ratio = _load("static_twin_ratio")
    torch.manual_seed(0)
    model = create_model("mobilenetv2_dcd", num_classes=10, width_mult=0.35).eval()
    floor = ratio.floor_model(model, 32)
    lowered, report = lower_model(model, torch.randn(1, 3, 32, 32))
    convs = [m for m in floor.modules() if isinstance(m, ratio.ScaleOnlyConv)]
    assert len(convs) == sum(1 for layer in report.lowered if layer.form in ("factored", "merged"))
    # with the low-rank branch's projection P zeroed, the DCD layer is exactly its floor
    for module in lowered.modules():
        if hasattr(module, "p_w"):
            module.p_w.zero_()
        elif hasattr(module, "p") and hasattr(module, "phi"):
            module.p.weight.data.zero_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(floor(x), lowered(x), rtol=1e-5, atol=1e-5)


def test_fit_cost_model_reports_each_layer(tmp_path, capsys):
    fit = _load("fit_cost_model")
    out = tmp_path / "fit.json"
    assert fit.main(["--models", "mobilenetv2_dcd", "--size", "32", "--batches", "1", "--runs", "2", "--also", "2,80,0",
                     "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 10 and all(r["factored"] > 0 and r["merged"] > 0 for r in rows)
    text = capsys.readouterr().out
    assert "current constants: lose" in text and "constants (2.0, 80.0, 0.0): lose" in text and "least loss" in text


def test_int8_speed_with_floor(tmp_path, capsys):
    int8 = _load("int8_speed")
    out = tmp_path / "i.json"
    assert int8.main(["--models", "resnet18_dcd", "--size", "32", "--batches", "1", "--runs", "2", "--calibration", "4",
                      "--floor", "--variants", "int8-nchw", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["median_s"]) == {"static", "dcd", "int8", "int8-static", "int8-floor", "int8-nchw"}
    assert all(isinstance(v, float) and v > 0 for v in row["median_s"].values())
    assert "| resnet18_dcd | 1 | int8-floor |" in capsys.readouterr().out


def test_int8_elementwise_times_every_variant(capsys):
    elementwise = _load("int8_elementwise")
    assert elementwise.main(["--shape", "1,4,4,8", "--runs", "2"]) == 0
    table = capsys.readouterr().out
    for variant in ("QLinearMul NHWC broadcast", "QLinearMul NCHW broadcast", "QLinearMul same shape", "float DQ + Mul + Q"):
        assert f"| {variant} |" in table
    assert "| QLinearMul same shape | " in table and "| 1.00× |" in table


def test_fit_cost_model_families_times_every_form_and_fits(tmp_path, capsys):
    fit = _load("fit_cost_model")
    out = tmp_path / "families.json"
    assert fit.main(["--families", "--models", "dy_resnet18", "--size", "32", "--batches", "1", "--runs", "2",
                     "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert len(rows) >= 5 and all(set(r["times"]) >= {"experts", "unfold", "loop"} for r in rows if "3×3" in r["layer"])
    assert all(t > 0 for r in rows for t in r["times"].values())
    assert {"current constants", "fitted constants"} <= set(data["fit"])
    text = capsys.readouterr().out
    assert "current constants (KERNEL_COST" in text and "least loss" in text
    # re-scoring the saved measurements needs no timing
    assert fit.main(["--families", "--load", str(out)]) == 0


def test_fit_search_is_exhaustive_on_a_small_grid_and_descends_on_a_large_one():
    fit = _load("fit_cost_model")
    loss = lambda c: abs(c[0] - 3) + abs(c[1] - 1)
    assert fit.search(loss, [range(6), range(4)], (0, 0)) == (0, [(3, 1)])
    best, points = fit.search(loss, [range(6), range(4)], (0, 0), exhaustive_limit=1)
    assert best == 0 and (3, 1) in points


def test_dynamic_families_dry_run_of_the_cuda_target_on_cpu(tmp_path, capsys):
    """What gpu_check.sh's families part runs, on a CPU at a toy size: a --target cuda graph with no control flow."""
    families = _load("dynamic_families")
    out = tmp_path / "f.json"
    families.main(["--models", "od_resnet18", "--target", "cuda", "--size", "32", "--batches", "1,2", "--runs", "2",
                   "--warmup", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["model"], r["batch"], r["target"]) for r in rows] == [("od_resnet18", 1, "cuda"), ("od_resnet18", 2, "cuda")]
    assert all("loop" not in r["forms"].split(";")[0] and r["forms"].endswith("0 loops") for r in rows)
    assert all(r["error"] < 1e-4 for r in rows)
