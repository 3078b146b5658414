"""Export: graph properties, ONNX Runtime parity, dynamic shapes, fp16, failure handling, CLI.

Messages are matched after joining their lines: error paragraphs are wrapped at the terminal's
width, and temporary paths vary in length.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from custom_models import NoBn2
from dcd_deploy_cli.main import cli

from dcd_deploy.errors import LoweringError, SelfCheckFailed
from dcd_deploy.exporting.graphcheck import conv_weights_are_constant
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.result import SELF_CHECK_RTOL
from dcd_deploy.load.model import load_model
from dcd_deploy.lowering import relative_error
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

SIZE = 48


def joined(text: str) -> str:
    """``text`` as one line: wrapped paragraphs and long paths compare the same however they were wrapped."""
    return " ".join(text.split())


def small(arch: str, size: int = SIZE, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(create_model(arch, num_classes=10, **options), size)


def run_ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def ort_error(path, model, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x)
    return relative_error(torch.from_numpy(run_ort(path, x.numpy())), ref)


@pytest.fixture(scope="module")
def mbv2():
    return small("mobilenetv2_dcd", width_mult=0.25, fc_squeeze=8)


@pytest.fixture(scope="module")
def mbv2_checkpoint(tmp_path_factory, mbv2):
    path = tmp_path_factory.mktemp("ckpt") / "mbv2.pth"
    torch.save({"epoch": 3, "arch": "mobilenetv2_dcd", "best_prec1": 50.0, "optimizer": {},
                "state_dict": {"module." + k: v for k, v in mbv2.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def mbv2_onnx(tmp_path_factory, mbv2_checkpoint):
    path = tmp_path_factory.mktemp("onnx") / "mbv2.onnx"
    result = export(load_model(mbv2_checkpoint), path, input_size=SIZE)
    return path, result


@pytest.mark.parametrize("arch", ["mobilenetv2_dcd", "resnet18_dcd"])
def test_export_matches_original_on_ort_at_batch_1_and_3(tmp_path, arch):
    model = small(arch, 64) if arch.startswith("resnet") else small(arch, SIZE, width_mult=0.35)
    size = 64 if arch.startswith("resnet") else SIZE
    result = export(model, tmp_path / "m.onnx", input_size=size)
    assert result.report and result.self_check and set(result.self_check.errors) == {1, 3}
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        assert ort_error(result.path, model, x) <= 1e-4


def test_graph_properties(mbv2_onnx, mbv2_checkpoint):
    path, result = mbv2_onnx
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert out.type.tensor_type.shape.dim[0].dim_param
    assert conv_weights_are_constant(graph) == []
    ops = {n.op_type for n in graph.graph.node}
    assert "BatchNormalization" not in ops and "HardSigmoid" not in ops
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["dcd_deploy.arch"] == "mobilenetv2_dcd"
    assert json.loads(meta["dcd_deploy.arch_options"])["width_mult"] == 0.25
    assert meta["dcd_deploy.checkpoint_sha256"] == hashlib.sha256(mbv2_checkpoint.read_bytes()).hexdigest()
    assert meta["dcd_deploy.version"] and "33/33 dynamic layers lowered" in json.loads(meta["dcd_deploy.rewrite"])["summary"]
    assert result.node_count == len(graph.graph.node)


def test_no_attribute_depends_on_the_batch_size(mbv2_onnx, mbv2):
    path, _ = mbv2_onnx
    for batch in (1, 2, 5):
        x = torch.randn(batch, 3, SIZE, SIZE)
        assert ort_error(path, mbv2, x) <= 1e-4


def test_static_batch_export(tmp_path, mbv2):
    result = export(mbv2, tmp_path / "b2.onnx", input_size=SIZE, batch=2)
    dims = onnx.load(result.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, SIZE, SIZE]
    assert set(result.self_check.errors) == {2}


def test_dynamic_size_export_runs_at_two_sizes(tmp_path, mbv2):
    result = export(mbv2, tmp_path / "dyn.onnx", input_size=SIZE, dynamic_size=True)
    dims = onnx.load(result.path).graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param
    for size in (40, 72):  # odd final maps at 72 (3×3): overlapping pooling bins
        x = torch.randn(2, 3, size, size)
        assert ort_error(result.path, mbv2, x) <= 1e-4


def test_fp16_export_runs_on_cpu_within_fp16_tolerance(tmp_path, mbv2):
    result = export(mbv2, tmp_path / "h.onnx", input_size=SIZE, fp16=True)
    graph = onnx.load(result.path)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = torch.randn(3, 3, SIZE, SIZE)
    assert ort_error(result.path, mbv2, x) <= SELF_CHECK_RTOL["float16"]


def test_failed_self_check_removes_the_file_or_keeps_it_when_asked(tmp_path, mbv2, monkeypatch):
    from dcd_deploy.runtime import float64

    monkeypatch.setitem(SELF_CHECK_RTOL, "float32", 0.0)
    monkeypatch.setattr(float64, "NOISE_FACTOR", 0.0)  # no allowance for the original's float32 error either
    target = tmp_path / "fail.onnx"
    with pytest.raises(SelfCheckFailed, match="No file was written"):
        export(mbv2, target, input_size=SIZE)
    assert not target.exists() and not list(tmp_path.iterdir())
    with pytest.raises(SelfCheckFailed, match="--keep-failed"):
        export(mbv2, target, input_size=SIZE, keep_failed=True)
    assert target.exists()




def test_unlowered_layer_refuses_export_and_names_it(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), NoBn2(8, 8)).eval()
    with pytest.raises(LoweringError, match=r"1: not a DCD layer as published: has .* but no bn2"):
        export(net, tmp_path / "x.onnx", input_size=8)
    assert not (tmp_path / "x.onnx").exists()


def test_onnxsim_failure_falls_back_with_a_warning(tmp_path, mbv2, monkeypatch):
    import onnxsim

    def broken(*args, **kwargs):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = export(mbv2, tmp_path / "nosim.onnx", input_size=SIZE)
    assert result.self_check and any("simulated onnxsim crash" in w for w in result.warnings)


def test_cli_export_prints_rewrite_and_self_check(tmp_path, mbv2_checkpoint):
    out = tmp_path / "cli.onnx"
    res = CliRunner().invoke(cli, ["export", str(mbv2_checkpoint), "-o", str(out), "--input-size", str(SIZE),
                                   "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "33/33 dynamic layers lowered" in res.output and "PASS" in res.output and out.exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["rewrite"]["layers"]) == 33 and report["ops"]["Conv"] > 0
    assert report["self_check"]["passed"] and report["path"] == str(out) and report["timings_s"]["total_s"] > 0


def test_cli_export_bad_input_is_one_clear_message(tmp_path, mbv2_checkpoint):
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "a.onnx")])
    assert res.exit_code == 2 and "does not exist" in joined(res.output) and "Traceback" not in res.output
    res = runner.invoke(cli, ["export", str(mbv2_checkpoint), "-o", str(tmp_path / "a.onnx"), "--input-size", "big"])
    assert res.exit_code == 2 and "--input-size" in joined(res.output) and "Traceback" not in res.output
    res = runner.invoke(cli, ["export", str(mbv2_checkpoint), "-o", str(tmp_path / "a.onnx"), "--arch", "resnet18_dcd"])
    assert res.exit_code == 2 and "does not match resnet18_dcd" in joined(res.output)
    assert not (tmp_path / "a.onnx").exists()


def test_package_level_export_works_on_any_module_and_returns_the_report(tmp_path, mbv2):
    import dcd_deploy

    wrapped = torch.nn.Sequential(torch.nn.Identity(), mbv2)  # a user's network containing DCD layers
    result = dcd_deploy.export(wrapped, tmp_path / "wrapped.onnx", input_size=SIZE)
    assert result and "33/33 dynamic layers lowered" in result.summary()
    assert result.layers[0].path == "1.features.2.conv.0"
