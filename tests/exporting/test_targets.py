"""Per-target lowering: the CUDA cost model, ``--target``, ``--tune`` on a target's provider.

The GPU tests (``-m gpu``) skip cleanly without onnxruntime-gpu and a CUDA device.
"""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
import torch
from conftest import SMALL_INPUT, assert_user_error

from dcd_deploy.bench.run import REDUCED_PRECISION_RTOL, bench
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.tuning import tuned_form_chooser
from dcd_deploy.lowering import FAMILIES, find_dcd_layers, lower_model
from dcd_deploy.lowering.costmodel import CostChooser
from dcd_deploy.lowering.families.dcd_conv import cost_chooser, form_costs
from dcd_deploy.zoo import create_model

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def choose_form_by_cost(info, in_shape, target="cpu"):
    return CostChooser(target)(FAMILIES[info.family], info, in_shape, None)


def _layers(model):
    return {f.path: f.match for f in find_dcd_layers(model) if f.family == "dcd_conv"}


def test_cuda_cost_model_counts_launches_and_bytes():
    infos = _layers(create_model("resnet50_dcd"))
    early, late = infos["layer1.0.conv1"], infos["layer4.0.conv3"]
    # a 56×56 map: the merged kernel saves four passes over 64×3136 floats on the CPU, but on a GPU
    # those passes take less than the two extra kernel launches
    assert choose_form_by_cost(early, (1, 64, 56, 56), "cpu") == "merged"
    assert choose_form_by_cost(early, (1, 64, 56, 56), "cuda") == "factored"
    # on a large map the bytes win on the GPU too
    assert choose_form_by_cost(early, (1, 64, 448, 448), "cuda") == "merged"
    costs = form_costs(late, (1, 512, 7, 7), "cuda")
    assert set(costs) == {"factored", "merged"} and all(c > 0 for c in costs.values())
    with pytest.raises(ValueError, match="unknown target"):
        form_costs(late, (1, 512, 7, 7), "tpu")
    with pytest.raises(ValueError, match="unknown target"):
        cost_chooser("tpu")


def test_target_changes_the_chosen_forms_and_keeps_parity(small_model, small_input):
    example = small_input[:1]
    cpu, cpu_report = lower_model(small_model, example, "auto", target="cpu")
    gpu, gpu_report = lower_model(small_model, example, "auto", target="cuda")
    assert [l.form for l in cpu_report.lowered] != [l.form for l in gpu_report.lowered]
    with torch.no_grad():
        ref = small_model(small_input)
        for lowered in (cpu, gpu):
            err = (lowered(small_input) - ref).abs().max() / ref.abs().max()
            assert err < 1e-5


def test_export_records_the_target(small_model, tmp_path):
    result = export(small_model, tmp_path / "m.onnx", input_size=SMALL_INPUT, target="cuda")
    meta = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert meta["dcd_deploy.target"] == "cuda"
    assert result.self_check and result.self_check.passed


def test_export_rejects_an_unknown_target(small_model, tmp_path):
    from dcd_deploy.errors import InputError

    with pytest.raises(InputError, match="Unknown target"):
        export(small_model, tmp_path / "m.onnx", input_size=SMALL_INPUT, target="tpu")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message shown where CUDA is missing")
def test_tune_on_cuda_without_cuda_is_a_clear_error(run_cli, small_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = run_cli("export", small_checkpoint, "-o", out, "--input-size", SMALL_INPUT, "--tune", "--target", "cuda")
    assert_user_error(result, "cuda", "onnxruntime-gpu", code=3)
    assert not out.exists()


def test_tune_on_cpu_picks_measured_forms(small_model, tmp_path):
    seen = []
    chooser = tuned_form_chooser(runs=3, target="cpu", on_progress=seen.append)
    result = export(small_model, tmp_path / "m.onnx", input_size=SMALL_INPUT, form=chooser)
    assert result.self_check.passed
    assert seen and all("tuned on cpu" in line for line in seen)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with a CUDA device")
def test_tune_on_cuda_and_export(small_model, tmp_path):
    seen = []
    chooser = tuned_form_chooser(runs=5, target="cuda", on_progress=seen.append)
    result = export(small_model, tmp_path / "m.onnx", input_size=SMALL_INPUT, form=chooser, target="cuda")
    assert result.self_check.passed
    assert seen and all("tuned on cuda" in line for line in seen)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with a CUDA device")
def test_bench_on_cuda_with_cuda_graphs(small_model):
    result = bench(small_model, providers="cuda", batches=[1, 2], input_size=SMALL_INPUT, runs=5, warmup=2,
                   cuda_graph=True, naive_exporter="torchscript")
    rows = {(r.row, r.batch): r for r in result.rows if r.provider == "cuda"}
    for batch in (1, 2):
        for name in ("dcd-deploy", "static", "eager"):
            assert rows[(name, batch)].stats is not None, rows[(name, batch)].reason
        assert rows[("dcd-deploy", batch)].max_rel_err <= REDUCED_PRECISION_RTOL  # TF32 convolutions
    assert not [n for n in result.notes if "differs" in n], result.notes
    assert "target cuda" in next(p.note for p in result.prepared if p.row == "dcd-deploy")
