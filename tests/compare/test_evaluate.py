"""``dcd-deploy evaluate``: accuracy on labelled data, the held-out digits file, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import assert_user_error, sample_training_module
from dcd_deploy_cli.commands.evaluate import command as evaluate_command

from dcd_deploy.compare.accuracy import EvaluationResult, evaluate, score
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.load.model import load_model
from dcd_deploy.runtime.labelled import LabelledSet

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
HELDOUT = SAMPLES / "digits_heldout.npz"
CHECKPOINT = SAMPLES / "mobilenetv2_dcd_w025_digits.pth"



@pytest.fixture(scope="module")
def digits():
    """The held-out digits preprocessed by the training script itself, and their labels."""
    train = sample_training_module()
    settings = train.load_settings(SAMPLES / "settings.json")
    data = train.load_digits_npz(SAMPLES / settings["data"])
    x = train.preprocess(data.images[data.test_idx], settings["input"]).numpy()
    return x, data.labels[data.test_idx], settings


@pytest.fixture(scope="module")
def sample_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evaluate") / "w025.onnx"
    export(load_model(CHECKPOINT), path, input_size=48, self_check=False)
    return path


def invoke(*args):
    return CliRunner().invoke(evaluate_command, [str(a) for a in args], prog_name="dcd-deploy evaluate")


def test_heldout_file_is_small_and_exactly_the_training_preprocessing(sample_onnx, digits):
    from dcd_deploy.runtime.labelled import load_labelled
    from dcd_deploy.runtime.onnxfile import read_onnx

    x, labels, _ = digits
    assert HELDOUT.stat().st_size < 50_000
    labelled = load_labelled(HELDOUT, read_onnx(sample_onnx).spec)
    assert labelled.count == 360
    assert np.array_equal(labelled.data, x)  # bit for bit: same torch ops as train.py's preprocess
    assert np.array_equal(labelled.labels, labels)


def test_evaluate_matches_onnx_runtime_and_the_recorded_accuracy(sample_onnx, digits):
    x, labels, _ = digits
    logits = ort.InferenceSession(str(sample_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    result = evaluate(sample_onnx, HELDOUT, CHECKPOINT)
    assert result.onnx.top1 == pytest.approx(float(np.mean(logits.argmax(1) == labels)), abs=0)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert result.onnx.top5 == pytest.approx(float(np.mean((top5 == labels[:, None]).any(1))), abs=0)
    recorded = json.loads((SAMPLES / "results.json").read_text())["models"]["mobilenetv2_dcd_w025_digits"]
    assert result.reference.top1 * 100 == pytest.approx(recorded["held_out_accuracy"], abs=1e-9)
    assert result.agreement() == 1.0 and result.changes == [] and result.n == 360


def test_cli_json_to_stdout(sample_onnx):
    result = invoke(sample_onnx, CHECKPOINT, "--data", HELDOUT, "--json", "-", "-q", "--max-drop", "0")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 360 and 0.9 < report["onnx"]["top1"] <= report["onnx"]["top5"] <= 1
    assert report["reference"]["top1"] == report["onnx"]["top1"] and report["agreement"] == 1.0
    assert "top-1" in result.stderr


def test_cli_without_checkpoint_and_image_folder(sample_onnx, digits, tmp_path):
    from PIL import Image

    x, labels, settings = digits
    mean, std = settings["input"]["mean"][0], settings["input"]["std"][0]
    for i in range(40):  # an ImageFolder tree: class names sort in label order
        folder = tmp_path / f"digit{labels[i]}"
        folder.mkdir(exist_ok=True)
        unit = np.clip(x[i, 0] * std + mean, 0, 1)
        Image.fromarray((unit * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    classes = sorted({f"digit{v}" for v in labels[:40]})
    result = invoke(sample_onnx, "--data", tmp_path, "--mean", mean, "--std", std, "-q", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference"] is None and report["agreement"] is None and report["n"] == 40
    assert report["data"]["classes"] == classes
    assert report["onnx"]["top1"] >= 0.8  # the images are 8-bit copies of correctly preprocessed digits


def test_max_drop_gate():
    labels = np.array([0, 1, 2, 3])
    eye = np.eye(4, dtype=np.float32)
    onnx_score = score("cpu", eye[[0, 1, 2, 0]], labels)  # 3/4 right
    reference = score("reference", eye, labels)  # 4/4 right
    data = LabelledSet(np.zeros((4, 3, 2, 2), np.float32), labels, "npz", Path("x.npz"))
    result = EvaluationResult(Path("m.onnx"), "int8", data, [onnx_score], reference, [], max_drop=25.0)
    assert result.drop_points() == pytest.approx(25.0) and result.passed and result.failure() is None
    result.max_drop = 24.9
    assert not result and result.failure().exit_code == 1
    assert result.agreement() == 0.75


@pytest.mark.parametrize("arrays, fragments", [
    ({"input": np.zeros((4, 3, 48, 48), np.float32)}, ["no 'labels' array"]),
    ({"input": np.zeros((4, 3, 32, 32), np.float32), "labels": np.zeros(4, np.int64)}, ["height 32 instead of 48"]),
    ({"input": np.zeros((4, 3, 48, 48), np.float32), "labels": np.array([0, 1, 2, 10])}, ["label 10 is out of range", "10 classes"]),
    ({"input": np.zeros((4, 3, 48, 48), np.float32), "labels": np.zeros(3, np.int64)}, ["there are 4 samples"]),
    ({"input": np.zeros((4, 3, 48, 48), np.float32), "labels": np.array([0.5, 1, 2, 3])}, ["not class indices"]),
])
def test_bad_npz_is_a_user_error(sample_onnx, tmp_path, arrays, fragments):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert_user_error(invoke(sample_onnx, "--data", path, "-q"), *fragments, code=2)


def test_empty_folder_is_a_user_error(sample_onnx, tmp_path):
    assert_user_error(invoke(sample_onnx, "--data", tmp_path, "-q"), "has no class subfolders", code=2)
    (tmp_path / "cat").mkdir()
    assert_user_error(invoke(sample_onnx, "--data", tmp_path, "-q"), "contains no images", code=2)


def test_unknown_provider_is_a_usage_error(sample_onnx):
    assert_user_error(invoke(sample_onnx, "--data", HELDOUT, "--providers", "nope"), "Unknown execution provider")
