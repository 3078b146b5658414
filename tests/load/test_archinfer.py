"""Architecture inference from keys and shapes, checks of given options, and custom --model networks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dcd_deploy import load_model
from dcd_deploy.errors import ArchitectureError, CheckpointError
from dcd_deploy.load.archinfer import expected_shapes, infer_architecture, shape_mismatch
from dcd_deploy.load.checkpoint import load_checkpoint
from dcd_deploy.zoo import get_arch


def shapes_only(arch: str, **options) -> dict[str, torch.Tensor]:
    """A state dict of meta tensors: the keys and shapes a checkpoint of ``arch`` would hold."""
    return {k: torch.empty(s, device="meta") for k, s in expected_shapes(arch, options).items()}


# --- inference ------------------------------------------------------------------------------

@pytest.mark.parametrize("width_mult", [0.25, 0.35, 0.5, 0.75, 1.0, 1.4])
def test_width_mult_is_inferred(width_mult):
    guess = infer_architecture(shapes_only("mobilenetv2_dcd", width_mult=width_mult))
    assert guess.arch == "mobilenetv2_dcd" and guess.options["width_mult"] == width_mult
    assert any(note.startswith(f"width_mult={width_mult} ") for note in guess.notes)


@pytest.mark.parametrize("fc_squeeze", [4, 8, 16, 32])
def test_fc_squeeze_is_inferred(fc_squeeze):
    guess = infer_architecture(shapes_only("mobilenetv2_dcd", fc_squeeze=fc_squeeze))
    assert guess.options["fc_squeeze"] == fc_squeeze
    assert any(note.startswith(f"fc_squeeze={fc_squeeze} ") for note in guess.notes)


@pytest.mark.parametrize("arch", ["mobilenetv2_dcd", "resnet18_dcd", "resnet50_dcd"])
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_num_classes_is_inferred(arch, num_classes):
    guess = infer_architecture(shapes_only(arch, num_classes=num_classes))
    assert guess.options["num_classes"] == num_classes


@pytest.mark.parametrize("arch", ["mobilenetv2_dcd", "resnet34_dcd"])
def test_dropout_is_inferred_from_the_head_key_index(arch):
    with_dropout = infer_architecture(shapes_only(arch, dropout=0.3))
    without = infer_architecture(shapes_only(arch, dropout=0.0))
    # classifier.1 (after Dropout): the rate is not stored, so the architecture's default is used.
    assert with_dropout.options["dropout"] == get_arch(arch).defaults["dropout"] > 0
    assert any("classifier.1" in note for note in with_dropout.notes)
    # classifier.0: no Dropout.
    assert without.options["dropout"] == 0.0
    assert any("classifier.0" in note for note in without.notes)


@pytest.mark.parametrize("arch", ["resnet18_dcd", "resnet34_dcd", "resnet50_dcd", "resnet101_dcd", "resnet152_dcd"])
def test_resnet_depth_is_inferred(arch):
    assert infer_architecture(shapes_only(arch)).arch == arch


def test_load_model_says_what_was_inferred(small_checkpoint, small_options):
    loaded = load_model(small_checkpoint)
    assert loaded.inferred and loaded.options == small_options
    described = loaded.describe()
    assert "inferred" in described and "width_mult=0.35" in described
    for name in ("width_mult", "fc_squeeze", "num_classes", "dropout"):
        assert any(note.startswith(name + "=") for note in loaded.notes), (name, loaded.notes)


def test_cli_inspect_reports_the_inferred_options(small_checkpoint, small_options, run_cli):
    result = run_cli("inspect", small_checkpoint, "--input-size", 48, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["inferred"] is True and report["arch_options"] == small_options
    assert len(report["notes"]) == 4


# --- given options are checked against the file ----------------------------------------------

def test_matching_options_are_accepted_and_missing_ones_inferred(small_checkpoint):
    loaded = load_model(small_checkpoint, arch="mobilenetv2_dcd", options={"width_mult": 0.35})
    assert not loaded.inferred and loaded.options["fc_squeeze"] == 16 and loaded.options["num_classes"] == 10
    assert not any(note.startswith("width_mult=") for note in loaded.notes)  # given, so not reported as inferred


FITTING = "--arch mobilenetv2_dcd --width-mult 0.35 --fc-squeeze 16 --num-classes 10 --dropout 0.2"


@pytest.mark.parametrize("arch, options, first_difference", [
    ("resnet18_dcd", {}, ("the network expects 'conv1.weight' (64, 3, 7, 7), which the checkpoint lacks; "
                          "the checkpoint has 'features.0.0.weight' (16, 3, 3, 3) instead")),
    ("mobilenetv2_dcd", {"width_mult": 0.5}, ("'features.2.conv.6.conv.weight' is (8, 48, 1, 1) in the checkpoint "
                                              "but (16, 48, 1, 1) in the network")),
    ("mobilenetv2_dcd", {"fc_squeeze": 8}, "'features.2.conv.6.fc.0.weight' is (4, 48) in the checkpoint but (6, 48)"),
    ("mobilenetv2_dcd", {"num_classes": 100}, "'classifier.1.cls.weight' is (10, 1280) in the checkpoint but (100, 1280)"),
    ("mobilenetv2_dcd", {"dropout": 0.0}, ("the network expects 'classifier.0.cls.weight' (10, 1280), which the "
                                           "checkpoint lacks; the checkpoint has 'classifier.1.cls.weight' (10, 1280) "
                                           "instead")),
])
def test_wrong_architecture_names_first_differing_key_with_both_shapes_and_the_fitting_options(
        small_checkpoint, arch, options, first_difference):
    with pytest.raises(ArchitectureError) as err:
        load_model(small_checkpoint, arch=arch, options=options)
    assert f"does not match {arch}" in err.value.problem
    assert first_difference in err.value.problem
    assert FITTING in err.value.fix


def test_wrong_arch_on_the_command_line_exits_2_with_the_fitting_options(small_checkpoint, run_cli, expect_user_error):
    result = run_cli("inspect", small_checkpoint, "--arch", "resnet50_dcd")
    expect_user_error(result, "does not match resnet50_dcd", "'conv1.weight' (64, 3, 7, 7)",
                      "'features.0.0.weight' (16, 3, 3, 3)", FITTING)
    # and the suggestion works as printed
    ok = run_cli("inspect", small_checkpoint, *FITTING.split(), "--input-size", 48)
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("args, fragments", [
    (["--arch", "resnet19_dcd"], ["Unknown architecture 'resnet19_dcd'", "resnet18_dcd"]),
    (["--arch", "resnet18_dcd", "--width-mult", "0.5"], ["no option 'width_mult'"]),
    (["--width-mult", "0.5"], ["--width-mult given without --arch"]),
    (["--model-arg", "num_classes=3"], ["--model-arg was given without --model"]),
])
def test_inconsistent_options_are_user_errors(small_checkpoint, run_cli, expect_user_error, args, fragments):
    expect_user_error(run_cli("inspect", small_checkpoint, *args), *fragments)


# --- missing and unexpected keys ---------------------------------------------------------------

def test_missing_key_is_named(small_checkpoint, run_cli, expect_user_error, tmp_path):
    sd = dict(load_checkpoint(small_checkpoint).state_dict)
    del sd["features.5.conv.0.fc_phi.weight"]
    torch.save({"state_dict": sd}, tmp_path / "missing.pth")
    for arch in (None, "mobilenetv2_dcd"):  # inferred and given
        with pytest.raises(ArchitectureError) as err:
            load_model(tmp_path / "missing.pth", arch=arch)
        assert "'features.5.conv.0.fc_phi.weight' (64, 4), which the checkpoint lacks" in err.value.problem
        assert "1 key missing from the checkpoint" in err.value.problem
        assert "incomplete" in err.value.fix
    expect_user_error(run_cli("inspect", tmp_path / "missing.pth"), "features.5.conv.0.fc_phi.weight")


def test_unexpected_key_is_named(small_checkpoint, run_cli, expect_user_error, tmp_path):
    sd = dict(load_checkpoint(small_checkpoint).state_dict)
    sd["classifier.1.extra.weight"] = torch.zeros(3, 2)
    torch.save(sd, tmp_path / "extra.pth")
    for arch in (None, "mobilenetv2_dcd"):
        with pytest.raises(ArchitectureError) as err:
            load_model(tmp_path / "extra.pth", arch=arch)
        assert "'classifier.1.extra.weight' (3, 2), which the network lacks" in err.value.problem
        assert "1 unexpected key in it" in err.value.problem
        assert "extra entries" in err.value.fix
    expect_user_error(run_cli("inspect", tmp_path / "extra.pth"), "classifier.1.extra.weight")


def test_shape_mismatch_reports_counts():
    expected = {"a": torch.Size([2]), "b": torch.Size([3])}
    assert shape_mismatch(expected, {"a": torch.zeros(2), "b": torch.zeros(3)}) is None
    text = shape_mismatch(expected, {"a": torch.zeros(2), "c": torch.zeros(4), "d": torch.zeros(1)})
    assert text == ("the network expects 'b' (3,), which the checkpoint lacks; the checkpoint has 'c' (4,) instead "
                    "(1 key missing from the checkpoint, 2 unexpected keys in it)")


def test_non_dcd_state_dicts_are_refused_with_a_hint():
    plain = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}
    with pytest.raises(ArchitectureError, match="Cannot tell which DCD architecture") as err:
        infer_architecture(plain)
    assert "--arch" in err.value.fix and "--model" in err.value.fix
    headless = {k: v for k, v in shapes_only("resnet18_dcd").items() if not k.startswith("classifier.")}
    with pytest.raises(ArchitectureError, match="no DCD classifier head"):
        infer_architecture(headless)
    odd_depth = {k: v for k, v in shapes_only("resnet18_dcd").items() if not k.startswith("layer4.1.")}
    with pytest.raises(ArchitectureError, match=r"\[2, 2, 2, 1\] per stage, which is no registered architecture"):
        infer_architecture(odd_depth)


def test_partial_mobilenet_is_refused_not_crashed():
    sd = {k: v for k, v in shapes_only("mobilenetv2_dcd").items() if ".conv_q." not in k}
    with pytest.raises(ArchitectureError):
        infer_architecture(sd)


# --- custom networks (--model package.module:factory) ------------------------------------------

@pytest.fixture
def custom_checkpoint(custom_models_importable, tmp_path, save_checkpoint):
    import custom_models

    from dcd_deploy.zoo.calibration import calibrate_batchnorm

    torch.manual_seed(0)
    model = calibrate_batchnorm(custom_models.factory(num_classes=7), input_size=32, batch_size=4)
    return model, save_checkpoint(model, tmp_path / "custom.pth", fmt="bare_prefixed")


def test_custom_factory_builds_and_loads_the_users_network(custom_checkpoint):
    model, path = custom_checkpoint
    loaded = load_model(path, model_factory="custom_models:factory", model_args={"num_classes": 7})
    assert loaded.arch == "custom:custom_models:factory" and loaded.options == {"num_classes": 7}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        assert torch.isfinite(expected).all() and expected.std() > 1e-3
        assert torch.equal(loaded.model(x), expected)


def test_custom_factory_from_the_command_line_finds_its_dcd_layers(custom_checkpoint, run_cli, monkeypatch, tmp_path):
    _, path = custom_checkpoint
    monkeypatch.chdir(tmp_path.parent)  # the folder is not what makes it importable here: sys.path is
    result = run_cli("inspect", path, "--model", "custom_models:factory", "--model-arg", "num_classes=7",
                     "--input-size", 32, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["arch"] == "custom:custom_models:factory"
    assert [(layer["path"], layer["kind"]) for layer in report["dcd_layers"]] == [("block", "conv_dy"), ("head", "DYCls")]


def test_custom_module_is_found_in_the_current_folder(custom_checkpoint, monkeypatch):
    """Like ``python -m``, --model looks in the folder the command runs from."""
    _, path = custom_checkpoint
    tests_dir = str(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (tests_dir, "")])
    monkeypatch.delitem(sys.modules, "custom_models", raising=False)
    monkeypatch.chdir(tests_dir)
    loaded = load_model(path, model_factory="custom_models:factory", model_args={"num_classes": 7})
    assert type(loaded.model).__name__ == "TinyDcdNet"


def test_custom_factory_with_wrong_classes_names_the_key(custom_checkpoint):
    _, path = custom_checkpoint
    with pytest.raises(CheckpointError) as err:
        load_model(path, model_factory="custom_models:factory", model_args={"num_classes": 5})
    assert "'head.cls.weight' is (7, 32) in the checkpoint but (5, 32) in the network" in err.value.problem


@pytest.mark.parametrize("spec, args, fragment", [
    ("custom_models", [], "is not of the form package.module:factory"),
    ("no_such_pkg.models:build", [], "Cannot import 'no_such_pkg.models'"),
    ("custom_models:nope", [], "has no attribute 'nope'"),
    ("custom_models:failing_factory", [], "failed with ValueError: this factory always fails"),
    ("custom_models:not_a_module", [], "returned a str, not an nn.Module"),
    ("custom_models:factory", ["--model-arg", "colour=3"], "unexpected keyword argument 'colour'"),
    ("custom_models:factory", ["--model-arg", "oops"], "is not key=value"),
    ("custom_models:factory", ["--num-classes", "7"], "--num-classes set options of registered architectures"),
])
def test_bad_model_specs_are_user_errors(custom_checkpoint, run_cli, expect_user_error, spec, args, fragment):
    _, path = custom_checkpoint
    expect_user_error(run_cli("inspect", path, "--model", spec, *args), fragment)
