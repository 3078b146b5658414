"""``inspect_model`` / ``dcd-deploy inspect`` and ``dcd-deploy archs``."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from dcd_deploy import LoadedModel, load_model
from dcd_deploy.errors import InputError
from dcd_deploy.inspection import inspect_model
from dcd_deploy.load.checkpoint import Checkpoint
from dcd_deploy.zoo import create_model, get_arch, list_archs


def loaded_in_memory(arch: str, **options) -> LoadedModel:
    """A registered network as load_model would return it, without a file (cost figures only)."""
    model = create_model(arch, **options).eval()
    full = {**get_arch(arch).defaults, **options}
    return LoadedModel(model, arch, full, False, [], Checkpoint(None, model.state_dict(), {"format": "in memory"}))


# Figures of the DCD paper's published architectures (also in the README), 224×224, batch 1, in M MACs.
@pytest.mark.parametrize("arch, options, macs, static, layers", [
    ("mobilenetv2_dcd", {"fc_squeeze": 16}, 398, 301, {"DYModule": 32, "DYCls": 1}),
    ("resnet18_dcd", {}, 1883, 1814, {"conv_basic_dy": 16, "DYCls": 1}),
])
def test_macs_match_the_architecture_document(arch, options, macs, static, layers):
    result = inspect_model(loaded_in_memory(arch, **options), input_size=224)
    assert round(result.macs / 1e6) == macs
    assert round(result.static_macs / 1e6) == static
    assert result.layer_counts == layers
    assert result.params == sum(p.numel() for p in create_model(arch, **options).parameters())
    assert result.input_shape == (1, 3, 224, 224)
    assert all(layer.macs and layer.static_macs and layer.macs > layer.static_macs for layer in result.layers)


def test_layer_details_follow_the_reference_size_rules():
    layers = {layer.path: layer for layer in inspect_model(loaded_in_memory("resnet50_dcd"), input_size=64).layers}
    assert len(layers) == 49
    conv2 = layers["layer2.0.conv2"]  # conv_dy(128, 128, 3, stride 2): L = int(sqrt(128)), squeeze = 128 // 16
    assert (conv2.kind, conv2.c_in, conv2.c_out, conv2.kernel, conv2.stride, conv2.latent, conv2.squeeze, conv2.pool) == \
        ("conv_dy", 128, 128, 3, 2, 11, 8, 1)
    conv3 = layers["layer4.2.conv3"]
    assert (conv3.kind, conv3.c_in, conv3.c_out, conv3.kernel, conv3.stride, conv3.latent) == ("conv_dy", 512, 2048, 1, 1, 22)
    head = layers["classifier.1"]
    assert (head.kind, head.c_in, head.c_out, head.kernel, head.stride, head.latent, head.squeeze, head.pool) == \
        ("DYCls", 2048, 1000, None, None, 32, 32, None)

    basic = inspect_model(loaded_in_memory("resnet18_dcd"), input_size=64).layers[0]
    # conv_basic_dy(64, 64): L = int(sqrt(4·64)) = 16, squeeze = max(256, 256) // 16, pooled 2×2
    assert (basic.path, basic.kind, basic.kernel, basic.latent, basic.squeeze, basic.pool) == \
        ("layer1.0.conv1", "conv_basic_dy", 3, 16, 16, 2)


def test_cli_json_has_the_documented_keys(small_checkpoint, small_model, small_options, run_cli):
    result = run_cli("inspect", small_checkpoint, "--input-size", 48, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"arch", "arch_options", "params", "macs", "dcd_layers", "checkpoint", "inferred", "notes", "input_size",
            "static_macs", "unmatched_layers"} <= set(report)
    assert report["arch"] == "mobilenetv2_dcd" and report["arch_options"] == small_options
    assert report["params"] == sum(p.numel() for p in small_model.parameters())
    assert report["input_size"] == [48, 48]
    assert 0 < report["static_macs"] < report["macs"]
    assert len(report["dcd_layers"]) == 33 and report["unmatched_layers"] == []
    first = report["dcd_layers"][0]
    assert first == {**first, "path": "features.2.conv.0", "kind": "DYModule", "c_in": 8, "c_out": 48, "kernel": 1,
                     "stride": 1, "latent": 4, "pool": 2}
    assert report["dcd_layers"][-1]["kind"] == "DYCls"
    ck = report["checkpoint"]
    assert ck["format"] == "reference training checkpoint" and ck["epoch"] == 30 and ck["arch"] == "mobilenetv2_dcd"
    assert ck["path"] == str(small_checkpoint) and len(ck["sha256"]) == 64


def test_cli_summary_is_a_readable_table(small_checkpoint, run_cli):
    result = run_cli("inspect", small_checkpoint, "--input-size", 48)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("network      mobilenetv2_dcd (width_mult=0.35, fc_squeeze=16, num_classes=10, dropout=0.2)")
    assert "inferred from the checkpoint" in lines[0]
    header = next(i for i, line in enumerate(lines) if "C_in→C_out" in line)
    assert lines[header].split() == ["#", "path", "kind", "C_in→C_out", "kernel/stride", "L", "squeeze", "pool", "MACs"]
    rows = lines[header + 1:header + 34]
    assert rows[0].split()[:8] == ["1", "features.2.conv.0", "DYModule", "8→48", "1×1/1", "4", "4", "2×2"]
    assert rows[-1].split()[:5] == ["33", "classifier.1", "DYCls", "1280→10", "linear"]
    assert len({row.index("DYModule" if "DYModule" in row else "DYCls") for row in rows}) == 1  # aligned column
    assert "epoch=30" in result.output and "best_prec1=71.25" in result.output


def test_modules_that_look_dynamic_but_do_not_match_are_reported(custom_models_importable, tmp_path):
    import custom_models

    model = custom_models.factory(half_dynamic=True).eval()
    torch.save(model.state_dict(), tmp_path / "half.pth")
    loaded = load_model(tmp_path / "half.pth", model_factory="custom_models:factory", model_args={"half_dynamic": True})
    result = inspect_model(loaded, input_size=32)
    assert [layer.path for layer in result.layers] == ["block", "head"]
    assert [(u.path, u.family) for u in result.unmatched] == [("extra", "dcd_conv")]
    assert "but no" in result.unmatched[0].reason and "bn2" in result.unmatched[0].reason
    assert "extra: has" in result.render()
    assert result.to_dict()["unmatched_layers"][0]["path"] == "extra"


def test_a_network_that_cannot_run_at_the_input_size_is_an_input_error(custom_models_importable, tmp_path, run_cli,
                                                                     expect_user_error):
    import custom_models

    torch.save(custom_models.factory(fixed_pool=True).state_dict(), tmp_path / "fixed.pth")
    loaded = load_model(tmp_path / "fixed.pth", model_factory="custom_models:factory", model_args={"fixed_pool": True})
    assert inspect_model(loaded, input_size=28).macs > 0  # AvgPool2d(7) fits a 7×7 map: 28×28 input
    with pytest.raises(InputError) as err:
        inspect_model(loaded, input_size=16)
    assert "cannot run on a 1×3×16×16 input" in err.value.problem and "--input-size" in err.value.fix
    expect_user_error(run_cli("inspect", tmp_path / "fixed.pth", "--model", "custom_models:factory",
                              "--model-arg", "fixed_pool=True", "--input-size", 16), "cannot run on a 1×3×16×16 input")


def test_input_size_accepts_height_by_width_and_rejects_nonsense(small_checkpoint, run_cli, expect_user_error):
    result = run_cli("inspect", small_checkpoint, "--input-size", "48x64", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["input_shape"] == [1, 3, 48, 64]
    expect_user_error(run_cli("inspect", small_checkpoint, "--input-size", "0"), "is not a size")


def test_trust_pickle_on_the_command_line(small_model, tmp_path, save_checkpoint, run_cli, expect_user_error):
    path = save_checkpoint(small_model, tmp_path / "whole.pth", fmt="module")
    expect_user_error(run_cli("inspect", path), "holds Python objects beyond tensors", "--trust-pickle")
    result = run_cli("inspect", path, "--trust-pickle", "--input-size", 48, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["arch"] == "pickled:MobileNetV2DCD" and len(report["dcd_layers"]) == 33


def test_real_command_prints_one_paragraph_and_no_traceback(tmp_path, dcd_deploy_executable):
    (tmp_path / "notes.pth").write_text("these are my notes, not a checkpoint\n")
    proc = subprocess.run([dcd_deploy_executable, "inspect", str(tmp_path / "notes.pth")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and "\n\n" not in proc.stderr.strip()  # a long path may wrap after "error:"
    flat = " ".join(proc.stderr.split())
    assert "is not a PyTorch checkpoint" in flat and "text file starting with 'these are my notes" in flat
    assert "torch.save" in flat


def test_archs_lists_every_registered_architecture(run_cli):
    text = run_cli("archs")
    assert text.exit_code == 0
    names = [line.split()[0] for line in text.output.splitlines()[1:]]
    assert names == ["mobilenetv2_dcd", "resnet18_dcd", "resnet34_dcd", "resnet50_dcd", "resnet101_dcd", "resnet152_dcd"]
    assert "--fc-squeeze 8" in text.output
    report = json.loads(run_cli("archs", "--json").output)
    assert sorted(a["name"] for a in report["archs"]) == list_archs()
    by_name = {a["name"]: a for a in report["archs"]}
    assert by_name["mobilenetv2_dcd"]["options"] == {"num_classes": 1000, "width_mult": 1.0, "dropout": 0.2, "fc_squeeze": 8}
    assert by_name["resnet50_dcd"] == {"name": "resnet50_dcd", "family": "resnet",
                                       "options": {"num_classes": 1000, "dropout": 0.1}}
