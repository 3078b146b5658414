"""Int8 quantization stage: node roles, the QDQ graph, its metadata and self-check, and the accuracy
of the bundled samples on the held-out digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SMALL_INPUT, build_calibrated, sample_training_module

from dcd_deploy.errors import InputError
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.quantize import (
    INT8_TOLERANCE,
    chain_nodes,
    check_inputs,
    compare_int8,
    cosine_per_sample,
    node_roles,
    quantize_int8,
    read_by_float_convs,
    run_int8_check,
)
from dcd_deploy.lowering.static_twin import static_twin

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    model = build_calibrated("mobilenetv2_dcd", input_size=SMALL_INPUT, num_classes=10, width_mult=0.35, fc_squeeze=16)
    folder = tmp_path_factory.mktemp("int8")
    export(model, folder / "dcd.onnx", input_size=SMALL_INPUT, self_check=False)
    export(static_twin(model), folder / "static.onnx", input_size=SMALL_INPUT, self_check=False)
    return onnx.load(folder / "dcd.onnx"), onnx.load(folder / "static.onnx")


def calibration(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, SMALL_INPUT, SMALL_INPUT), dtype=np.float32)


def test_roles_follow_the_rewrite_report(small_export):
    dcd, _ = small_export
    roles = node_roles(dcd)
    layers = json.loads({p.key: p.value for p in dcd.metadata_props}["dcd_deploy.rewrite"])["layers"]
    factored = sum(1 for layer in layers if layer["form"] == "factored")
    assert factored > 0
    counts = {r: sum(1 for v in roles.values() if v == r) for r in set(roles.values())}
    assert counts["latent"] == len(layers)  # one Φ·z or K(x)·x product per DCD layer (head included)
    assert counts["latent_conv"] == 2 * factored  # Q and P of each factored layer
    by_name = {n.name: n for n in dcd.graph.node}
    for name, role in roles.items():
        node = by_name[name]
        if role == "depthwise":
            assert next(a.i for a in node.attribute if a.name == "group") > 1
        if role == "dense":
            assert node.op_type in ("Gemm", "MatMul")


def test_static_twin_has_no_dynamic_roles(small_export):
    _, static = small_export
    assert {"latent", "latent_conv"}.isdisjoint(node_roles(static).values())


def test_quantized_graph_is_qdq_with_float_attention_and_metadata(small_export):
    dcd, _ = small_export
    q = quantize_int8(dcd, calibration(), method="minmax")
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    producer = {o: n for n in q.graph.node for o in n.output}
    quantized_convs = [n for n in q.graph.node if n.op_type == "Conv" and producer.get(n.input[1]) is not None
                       and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized_convs) == sum(1 for r in node_roles(dcd).values() if r in ("conv", "latent_conv"))
    for node in q.graph.node:  # attention, classifier and latent products read float tensors
        if node.op_type in ("Gemm", "MatMul"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["dcd_deploy.precision"] == "int8"
    assert meta["dcd_deploy.calibration_method"] == "minmax" and meta["dcd_deploy.calibration_samples"] == "8"
    assert meta["dcd_deploy.input_size"] == f"{SMALL_INPUT}x{SMALL_INPUT}"  # the float export's metadata is kept
    x = calibration(4)
    ref = ort.InferenceSession(dcd.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    check = run_int8_check(q, x, ref)
    assert check.samples == 4 and -1 <= check.cosine_min <= check.cosine_mean <= 1


def test_check_thresholds():
    ref = np.eye(10, dtype=np.float32)
    assert compare_int8(ref + 0.01, ref)
    flipped = ref.copy()
    flipped[0] = np.roll(flipped[0], 1)
    check = compare_int8(flipped, ref)
    # sample 0's top-1 moved, but its margin (1) is within the int8 logit error (1): a near-tie, not a disagreement
    assert check.raw_agreement == 0.9 and check.agreement == 1.0 and check.near_ties == 1
    assert check.cosine_min == pytest.approx(0.0, abs=1e-12)  # the cosine bound refuses it
    assert not check and "FAIL" in check.summary()
    assert check.tolerance == INT8_TOLERANCE
    a = np.random.default_rng(1).standard_normal((5, 7))
    expected = [float(np.dot(r, s) / np.linalg.norm(r) / np.linalg.norm(s)) for r, s in zip(a, 2 * a + 0.1)]
    assert np.allclose(cosine_per_sample(a, 2 * a + 0.1), expected, rtol=1e-12)


def test_check_inputs_are_new_but_on_the_calibration_scale():
    cal = calibration(8)
    x = check_inputs(cal, count=16)
    assert x.shape == (16, *cal.shape[1:]) and x.dtype == np.float32
    assert np.array_equal(x, check_inputs(cal, count=16))  # seeded
    assert not any(np.allclose(xi, ci, atol=1e-3) for xi in x for ci in cal)
    assert abs(float(x.std()) - float(cal.std())) < 0.1 * float(cal.std())


def test_bad_calibration_is_a_user_error(small_export):
    dcd, _ = small_export
    with pytest.raises(InputError, match="height 32 instead of 48"):
        quantize_int8(dcd, np.zeros((4, 3, 32, SMALL_INPUT), np.float32))
    with pytest.raises(InputError, match="Unknown calibration method"):
        quantize_int8(dcd, calibration(), method="kl")



@pytest.mark.e2e
@pytest.mark.parametrize("form", ["auto", "factored"])
@pytest.mark.parametrize("name", ["mobilenetv2_dcd_w035_digits", "mobilenetv2_dcd_w025_digits"])
def test_samples_keep_their_accuracy_in_int8(name, form, tmp_path):
    """64 training images calibrate; on the 360 held-out digits top-1 stays within 1 point, ≥ 98 % agree."""
    from dcd_deploy.compare.accuracy import evaluate
    from dcd_deploy.load.model import load_model
    from dcd_deploy.runtime.labelled import load_samples
    from dcd_deploy.runtime.onnxfile import input_spec

    train = sample_training_module()
    settings = train.load_settings(SAMPLES / "settings.json")
    digits = train.load_digits_npz(SAMPLES / settings["data"])
    cal = train.preprocess(digits.images[digits.train_idx[:64]], settings["input"]).numpy()
    x = train.preprocess(digits.images[digits.test_idx], settings["input"]).numpy()
    labels = digits.labels[digits.test_idx]
    export(load_model(SAMPLES / f"{name}.pth"), tmp_path / "f32.onnx", input_size=48, form=form, self_check=False)
    float_model = onnx.load(tmp_path / "f32.onnx")
    assert np.array_equal(load_samples(SAMPLES / "digits_calibration.npz", input_spec(float_model)), cal)
    q = quantize_int8(float_model, cal)
    onnx.save(q, tmp_path / "int8.onnx")
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    f32, i8 = run(tmp_path / "f32.onnx"), run(tmp_path / "int8.onnx")
    top1 = lambda logits: float(np.mean(logits.argmax(1) == labels))
    assert top1(i8) >= top1(f32) - 0.01
    assert np.mean(i8.argmax(1) == f32.argmax(1)) >= 0.98
    assert run_int8_check(q, x, f32)  # the documented self-check tolerance holds on real data
    result = evaluate(tmp_path / "int8.onnx", SAMPLES / "digits_heldout.npz")
    assert result.onnx.top1 == top1(i8)


@pytest.mark.e2e
def test_the_chain_forced_on_a_depthwise_network_keeps_its_accuracy(tmp_path):
    """The int8 chain never quantizes a tensor a float32 (depthwise) convolution reads: when it did,
    ONNX Runtime quantized those convolutions' weights per tensor itself and w025 fell to chance."""
    from dcd_deploy.load.model import load_model
    from dcd_deploy.runtime.labelled import load_labelled, load_samples
    from dcd_deploy.runtime.onnxfile import input_spec

    export(load_model(SAMPLES / "mobilenetv2_dcd_w025_digits.pth"), tmp_path / "f32.onnx", input_size=48,
           form="factored", self_check=False)
    float_model = onnx.load(tmp_path / "f32.onnx")
    spec = input_spec(float_model)
    held_out = load_labelled(SAMPLES / "digits_heldout.npz", spec)
    roles = node_roles(float_model)
    int8 = {name for name, role in roles.items() if role in ("conv", "latent_conv")}
    by_name = {n.name: n for n in float_model.graph.node}
    float_read = read_by_float_convs(float_model, int8)
    assert len(float_read) == sum(1 for r in roles.values() if r == "depthwise")
    assert all(float_read.isdisjoint(by_name[n].input) for n in chain_nodes(float_model, roles, {"conv", "latent_conv"}))
    q = quantize_int8(float_model, load_samples(SAMPLES / "digits_calibration.npz", spec), chain=True)
    logits = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": held_out.data})[0]
    assert np.mean(logits.argmax(1) == held_out.labels) >= 0.96  # float32: 98.06 %


# ------------------------------------------------------------------------------------------------
# The export pipeline and command line with --int8


W025 = SAMPLES / "mobilenetv2_dcd_w025_digits.pth"
CALIBRATION = SAMPLES / "digits_calibration.npz"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.e2e
def test_cli_writes_a_checked_int8_file(run_cli, tmp_path):
    from dcd_deploy.reporting import umask_mode
    from dcd_deploy.runtime.onnxfile import read_onnx

    out, report = tmp_path / "w025_int8.onnx", tmp_path / "report.json"
    res = run_cli("export", W025, "-o", out, "--input-size", 48, "--int8", "--calibration", CALIBRATION,
                  "--calibration-method", "minmax", "--report", report, "-q")
    assert res.exit_code == 0, res.output
    flat = _flat(res.output)
    assert "int8 self-check vs float32 original on 32 samples" in flat and "PASS" in flat
    assert out.stat().st_mode & 0o777 == umask_mode()
    model = read_onnx(out)
    assert model.precision == "int8" and model.metadata["dcd_deploy.precision"] == "int8"
    assert model.metadata["dcd_deploy.calibration_samples"] == "64"
    assert model.metadata["dcd_deploy.arch"] == "mobilenetv2_dcd" and model.proto.producer_name == "dcd-deploy"
    layers = json.loads(model.metadata["dcd_deploy.rewrite"])["layers"]
    assert {layer["form"] for layer in layers} == {"factored", "gemm"}  # int8 with --form auto: every W0 static
    data = json.loads(report.read_text())
    check = data["self_check"]
    assert check["passed"] and check["agreement"] >= INT8_TOLERANCE["agreement"]
    assert INT8_TOLERANCE["cosine_min"] <= check["cosine_min"] <= check["cosine_mean"] <= 1 + 1e-9
    assert "quantize_s" in data["timings_s"] and data["ops"]["QuantizeLinear"] > 0
    # the check's figures are what ONNX Runtime and the original network give on the same inputs
    import torch

    from dcd_deploy.load.model import load_model
    from dcd_deploy.runtime.labelled import load_samples

    x = check_inputs(load_samples(CALIBRATION, model.spec))
    with torch.no_grad():
        ref = load_model(W025).model.eval()(torch.from_numpy(x)).double().numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert compare_int8(got, ref).agreement == pytest.approx(check["agreement"])
    assert compare_int8(got, ref).cosine_mean == pytest.approx(check["cosine_mean"], abs=1e-4)


def test_int8_options_fail_before_any_work(run_cli, expect_user_error, tmp_path):
    out = tmp_path / "m.onnx"
    base = ["export", W025, "-o", out, "--input-size", 48]
    expect_user_error(run_cli(*base, "--int8"), "--int8 needs calibration data", "--calibration DATA")
    expect_user_error(run_cli(*base, "--int8", "--calibration", tmp_path / "none.npz"),
                      f"Calibration data {tmp_path / 'none.npz'} does not exist")
    expect_user_error(run_cli(*base, "--int8", "--fp16", "--calibration", CALIBRATION), "--int8 and --fp16 are exclusive")
    expect_user_error(run_cli(*base, "--calibration", CALIBRATION), "--calibration was given without --int8")
    res = run_cli(*base, "--int8", "--calibration", CALIBRATION, "--calibration-method", "kl")
    assert res.exit_code == 2 and "kl" in res.output
    assert not out.exists()


def test_calibration_of_the_wrong_size_is_a_user_error(run_cli, expect_user_error, tmp_path):
    out = tmp_path / "m.onnx"
    res = run_cli("export", W025, "-o", out, "--input-size", 32, "--int8", "--calibration", CALIBRATION, "-q")
    expect_user_error(res, "height 48 instead of 32")
    np.savez(tmp_path / "cal.npz", input=np.zeros((4, 3, 48, 48), np.float32) + np.nan)
    res = run_cli("export", W025, "-o", out, "--input-size", 48, "--int8", "--calibration", tmp_path / "cal.npz", "-q")
    expect_user_error(res, "NaN or infinite")
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


def test_a_failed_int8_check_writes_no_file(monkeypatch, tmp_path):
    from dcd_deploy.errors import SelfCheckFailed
    from dcd_deploy.exporting import int8check

    monkeypatch.setattr(int8check, "INT8_TOLERANCE", {"agreement": 1.01, "cosine_mean": 0.98, "cosine_min": 0.7})
    model = build_calibrated("mobilenetv2_dcd", input_size=SMALL_INPUT, num_classes=10, width_mult=0.35, fc_squeeze=16)
    with pytest.raises(SelfCheckFailed) as info:
        export(model, tmp_path / "m.onnx", input_size=SMALL_INPUT, int8=True, calibration=calibration(8))
    message = _flat(info.value.render())
    assert "The int8 model strays too far from the float32 original" in message and "(≥ 101%;" in message
    assert "No file was written" in message and "dcd-deploy evaluate" in message
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())


def test_dequantized_constant_weights_count_as_constant(small_export):
    from onnx import helper

    from dcd_deploy.exporting.graphcheck import conv_weights_are_constant

    dcd, _ = small_export
    q = quantize_int8(dcd, calibration())
    assert conv_weights_are_constant(q) == []
    conv = next(n for n in q.graph.node if n.op_type == "Conv" and n.input[1].endswith("_DequantizeLinear_Output"))
    dq = next(n for n in q.graph.node if conv.input[1] in n.output)
    # the same DequantizeLinear fed a computed tensor (an Identity of the int8 weight) is no longer constant
    q.graph.node.insert(list(q.graph.node).index(dq), helper.make_node("Identity", [dq.input[0]], ["computed_w"]))
    dq.input[0] = "computed_w"
    assert conv_weights_are_constant(q) == [conv.name]


def test_precision_and_parity_of_an_int8_file(small_export, tmp_path, run_cli, expect_user_error, small_checkpoint):
    from dcd_deploy.runtime.onnxfile import model_precision

    dcd, _ = small_export
    q = quantize_int8(dcd, calibration())
    assert model_precision(dcd) == "float32" and model_precision(q) == "int8"
    del q.metadata_props[:]
    assert model_precision(q) == "int8"  # a QDQ graph without dcd-deploy's metadata
    path = tmp_path / "q.onnx"
    onnx.save(quantize_int8(dcd, calibration()), path)
    expect_user_error(run_cli("parity", path, small_checkpoint), "is an int8 model", "dcd-deploy evaluate")
