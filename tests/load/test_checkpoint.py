"""Reading checkpoint files: every accepted format, and every broken file with its message."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from dcd_deploy import load_model
from dcd_deploy.errors import CheckpointError
from dcd_deploy.load.checkpoint import clean_state_dict, load_checkpoint

FORMATS = {
    "reference": "reference training checkpoint",
    "bare": "bare state dict",
    "bare_prefixed": "bare state dict (DataParallel 'module.' prefixes)",
    "model": "dict with 'model'",
    "state_dict": "dict with 'state_dict'",
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_tensor_format_loads_with_prefixes_stripped(fmt, small_model, small_input, tmp_path, save_checkpoint):
    path = save_checkpoint(small_model, tmp_path / "ckpt.pth", fmt=fmt, arch="mobilenetv2_dcd")
    ckpt = load_checkpoint(path)
    expected = small_model.state_dict()
    assert ckpt.format == FORMATS[fmt]
    assert list(ckpt.state_dict) == list(expected)  # 'module.' gone, order kept
    assert all(torch.equal(ckpt.state_dict[k], expected[k]) for k in expected)
    assert ckpt.module is None and len(ckpt.sha256) == 64

    loaded = load_model(ckpt)
    with torch.no_grad():
        assert torch.equal(loaded.model(small_input), small_model(small_input))


def test_reference_metadata_is_kept(small_checkpoint):
    meta = load_checkpoint(small_checkpoint).metadata
    assert meta == {"epoch": 30, "arch": "mobilenetv2_dcd", "best_prec1": 71.25, "has_optimizer_state": True,
                    "format": "reference training checkpoint"}


def test_clean_state_dict_strips_dataparallel_and_compile_prefixes_and_drops_non_tensors():
    t = torch.ones(1)
    raw = {"module.a.weight": t, "module._orig_mod.b.bias": t, "c": t, "module.module.d": t, "step": 3}
    assert list(clean_state_dict(raw)) == ["a.weight", "b.bias", "c", "d"]


def test_whole_pickled_module_needs_trust_pickle(small_model, small_input, tmp_path, save_checkpoint):
    path = save_checkpoint(small_model, tmp_path / "whole.pth", fmt="module")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "MobileNetV2DCD" in err.value.problem and "--trust-pickle" in err.value.fix

    ckpt = load_checkpoint(path, trust_pickle=True)
    assert ckpt.format == "pickled module (MobileNetV2DCD)" and ckpt.module is not None
    loaded = load_model(ckpt)
    assert loaded.arch == "pickled:MobileNetV2DCD"
    assert any("fit mobilenetv2_dcd" in note and "width_mult=0.35" in note for note in loaded.notes)
    with torch.no_grad():
        assert torch.equal(loaded.model(small_input), small_model(small_input))


def test_pickled_dataparallel_module_under_model_key_is_unwrapped(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save({"model": torch.nn.DataParallel(net), "epoch": 7}, tmp_path / "dp.pth")
    ckpt = load_checkpoint(tmp_path / "dp.pth", trust_pickle=True)
    assert isinstance(ckpt.module, torch.nn.Sequential)
    assert list(ckpt.state_dict) == ["0.weight", "0.bias"]
    assert ckpt.metadata["epoch"] == 7 and "under 'model'" in ckpt.format


class _WritesAFile:
    """Unpickling this runs code: it calls builtins.open on a path and so creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_tensors_are_read_with_weights_only_so_no_code_runs_without_trust(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _WritesAFile(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"Python objects beyond tensors \(io\.open"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    # With trust the code does run: proof that the refusal above came from weights_only.
    load_checkpoint(tmp_path / "evil.pth", trust_pickle=True)
    assert marker.exists()


def test_pickled_module_whose_class_is_gone_says_so(tmp_path, monkeypatch):
    (tmp_path / "gone_pkg.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_pkg

    torch.save(gone_pkg.Net(2, 2), tmp_path / "net.pth")
    monkeypatch.delitem(sys.modules, "gone_pkg")
    (tmp_path / "gone_pkg.py").unlink()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "net.pth", trust_pickle=True)
    assert "class cannot be imported" in err.value.problem and "state_dict" in err.value.fix


def _zip_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, tmp_path / "good.pth")
    return (tmp_path / "good.pth").read_bytes()


def _bad_file(kind, tmp_path):
    path = tmp_path / f"{kind}.pth"
    if kind == "missing":
        return path, "does not exist"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder"
    if kind == "empty":
        path.touch()
        return path, "is empty"
    if kind == "truncated":
        data = _zip_checkpoint(tmp_path)
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or corrupt"
    if kind == "truncated_legacy":
        torch.save({"w": torch.randn(64, 64)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
        data = (tmp_path / "legacy.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or corrupt"
    if kind == "text":
        path.write_text("name,score\nalice,3\n")
        return path, "text file starting with 'name,score'"
    if kind == "random_bytes":
        path.write_bytes(bytes(range(7, 200)))
        return path, "not the zip archive or pickle stream torch.save writes"
    if kind == "numpy_archive":
        np.savez(path.with_suffix(".npz"), x=np.zeros(3))
        return path.with_suffix(".npz"), "zip archive, but not one written by torch.save"
    if kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
        return path, "a pickle, but not one written by torch.save"
    if kind == "list":
        torch.save([torch.ones(1), torch.ones(2)], path)
        return path, "it holds a list"
    if kind == "dict_without_weights":
        torch.save({"epoch": 3, "arch": "resnet18_dcd", "note": "no weights here"}, path)
        return path, "no state dict under state_dict, model"
    raise AssertionError(kind)


BAD_FILES = ["missing", "folder", "empty", "truncated", "truncated_legacy", "text", "random_bytes", "numpy_archive",
             "plain_pickle", "list", "dict_without_weights"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_raise_a_checkpoint_error_with_a_fix(kind, tmp_path):
    path, fragment = _bad_file(kind, tmp_path)
    for trust in (False, True):  # trusting the file never turns a broken file into a traceback
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, trust_pickle=trust)
        assert fragment in err.value.problem, err.value.message
        assert str(path) in err.value.problem
        assert err.value.fix and err.value.exit_code == 2
        assert "\n" not in err.value.message


@pytest.mark.parametrize("kind", ["missing", "truncated", "text", "folder"])
def test_bad_files_fail_the_cli_with_one_paragraph(kind, tmp_path, run_cli, expect_user_error):
    path, fragment = _bad_file(kind, tmp_path)
    expect_user_error(run_cli("inspect", path), fragment)


# --- an ONNX model where the checkpoint belongs ----------------------------------------------------

def _tiny_onnx(path):
    """A valid ONNX classifier (global average pool of a 1×3×32×32 input) saved at ``path``."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


ONNX_GIVEN = ("is an ONNX model, not a PyTorch checkpoint; did you swap the arguments?",
              "`dcd-deploy parity MODEL.onnx CHECKPOINT`")


@pytest.mark.parametrize("name", ["model.onnx", "model.pth"])  # recognised by content, whatever the name
def test_onnx_model_given_as_checkpoint_is_named_for_what_it_is(name, tmp_path):
    path = _tiny_onnx(tmp_path / name)
    for trust in (False, True):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, trust_pickle=trust)
        assert str(path) in err.value.problem and ONNX_GIVEN[0] in err.value.problem
        assert ONNX_GIVEN[1] in err.value.fix and err.value.exit_code == 2


def test_a_file_named_onnx_that_is_not_one_keeps_its_own_message(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("name,score\nalice,3\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "text file starting with 'name,score'" in err.value.problem and "ONNX" not in err.value.message


@pytest.mark.parametrize("command", ["inspect", "export", "parity", "bench"])
def test_every_command_names_an_onnx_file_given_as_the_checkpoint(command, tmp_path, run_cli, expect_user_error):
    onnx_model = _tiny_onnx(tmp_path / "model.onnx")
    as_checkpoint = _tiny_onnx(tmp_path / "model.pth")  # bench reads names ending in .onnx as ONNX models
    output = tmp_path / "out.onnx"
    args = {
        "inspect": ["inspect", as_checkpoint],
        "export": ["export", onnx_model, "-o", output, "-q"],
        "parity": ["parity", onnx_model, as_checkpoint, "--samples", 2],
        "bench": ["bench", as_checkpoint, "--runs", 2],
    }[command]
    flat = expect_user_error(run_cli(*args), *ONNX_GIVEN)
    assert len(flat) < 600  # one paragraph
    assert not output.exists()
