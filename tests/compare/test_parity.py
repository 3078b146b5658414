"""`dcd-deploy parity`: metrics, verdicts, exit codes, JSON, localisation and the pytest helper.

One small DCD network is exported once for the module; the failing models are copies of that
export with one initializer edited, so every failure is a known, deliberate change.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from parity_fixtures import (
    DCD_LAYER,
    FIRST_DCD_LAYER,
    SIZE,
    build_case,
    build_model,
    dcd_static_kernel,
    edit_initializer,
    first_conv_weight,
    save_reference_checkpoint,
    with_static_batch,
    without_metadata,
)

from dcd_deploy.compare.metrics import REL_FLOOR, compare_output
from dcd_deploy.compare.parity import ParityOptions, check_parity
from dcd_deploy.compare.tolerance import DEFAULT_TOLERANCES, Tolerance, compute_precision, default_tolerance
from dcd_deploy.errors import InputError, OutputError, ProviderUnavailableError
from dcd_deploy.testing import assert_parity


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
SAMPLES = "4"  # few samples keep the CLI runs quick; the verdicts below do not depend on the count


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a shared machine, PyTorch's spinning intra-op threads make these small runs ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def expect_user_error(expect_user_error):
    """The shared check (exit code, one 'error:' paragraph, no traceback), with the fragments matched with all
    whitespace removed: a paragraph wrapped at 100 columns may split a long temporary path inside a word."""

    def check(result, *fragments, code=2):
        flat = expect_user_error(result, code=code)
        squeezed = "".join(flat.split())
        for fragment in fragments:
            assert "".join(fragment.split()) in squeezed, f"{fragment!r} not in message:\n{result.output}"
        return flat

    return check


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return build_case(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def dcd_kernel(case):
    return dcd_static_kernel(case.onnx)


@pytest.fixture(scope="module")
def dcd_weight_changed(case, dcd_kernel):
    """W0 of one DCD layer scaled by 1.05 in the ONNX file."""
    return edit_initializer(case.onnx, case.folder / "dcd_w0_x1.05.onnx", dcd_kernel, lambda w: w * 1.05)


@pytest.fixture(scope="module")
def stem_weight_changed(case):
    """The stem convolution (a static conv before every DCD layer) scaled by 1.05."""
    return edit_initializer(case.onnx, case.folder / "stem_x1.05.onnx", first_conv_weight(case.onnx), lambda w: w * 1.05)


@pytest.fixture(scope="module")
def nan_model(case, dcd_kernel):
    def poison(w):
        w = w.copy()
        w.flat[0] = np.nan
        return w

    return edit_initializer(case.onnx, case.folder / "nan.onnx", dcd_kernel, poison)


# ---------------------------------------------------------------------------------------------
# the metrics on hand-made arrays


def test_relative_error_is_finite_where_the_reference_is_zero():
    ref = np.array([[0.0, 10.0, -5.0]])
    out = np.array([[1e-3, 10.0, -5.0]])
    c = compare_output("y", ref, out, Tolerance(rtol=1e-4, atol=0.0))
    # |d| / max(|ref|, 1e-3·max|ref|) = 1e-3 / 1e-2
    assert c.max_rel_error == pytest.approx(1e-3 / (REL_FLOOR * 10.0))
    assert c.max_abs_error == pytest.approx(1e-3)
    assert not c.passed and c.violations == 1
    assert c.min_rtol is None  # no rtol covers an error where the reference is exactly 0
    assert c.min_atol == pytest.approx(1e-3)


def test_all_zero_reference_uses_absolute_error():
    c = compare_output("y", np.zeros((2, 3)), np.full((2, 3), 2e-3), Tolerance(rtol=0.0, atol=1e-3))
    assert c.max_rel_error == pytest.approx(2e-3) and c.ref_scale == 0.0
    assert not c.passed


def test_smallest_passing_tolerances_are_tight():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 10)) * 5
    out = ref + rng.standard_normal((8, 10)) * 1e-3
    tol = Tolerance(rtol=1e-4, atol=1e-5)
    c = compare_output("y", ref, out, tol)
    assert not c.passed
    # passes exactly at the reported values, fails a little below them
    assert compare_output("y", ref, out, Tolerance(rtol=1e-4, atol=c.min_atol * (1 + 1e-9))).passed
    assert not compare_output("y", ref, out, Tolerance(rtol=1e-4, atol=c.min_atol * 0.99)).passed
    assert compare_output("y", ref, out, Tolerance(rtol=c.min_rtol * (1 + 1e-9), atol=1e-5)).passed
    assert not compare_output("y", ref, out, Tolerance(rtol=c.min_rtol * 0.99, atol=1e-5)).passed
    # numpy allclose semantics
    assert c.passed == np.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_top1_top5_and_cosine():
    ref = np.array([[5.0, 4, 3, 2, 1, 0, -1], [0, 1, 2, 3, 4, 5, 6]])
    out = ref.copy()
    out[1, 5] = 7.0  # sample 1: top-1 changes from class 6 to 5, top-5 set unchanged
    c = compare_output("logits", ref, out, Tolerance(rtol=1e-4, atol_scale=1e-4))
    assert c.top1_agreement == 0.5 and c.top5_overlap == 1.0 and c.topk == 5
    assert c.cosine_min < 1.0 and c.cosine_min > 0.9
    assert not c.passed


def test_nan_and_inf_are_detected_and_fail():
    ref = np.ones((2, 4))
    out = ref.copy()
    out[0, 1], out[1, 2] = np.nan, np.inf
    c = compare_output("y", ref, out, Tolerance(rtol=1.0, atol=1e9))  # no tolerance hides a NaN
    assert (c.nan, c.inf) == (1, 1) and not c.passed
    assert c.min_atol is None and c.min_rtol is None and c.cosine_min is None
    assert "NaN" in c.reason()
    assert json.dumps(c.to_dict(), allow_nan=False)


def test_nan_in_the_reference_fails_too():
    ref = np.array([[1.0, np.nan]])
    c = compare_output("y", ref, ref.copy(), Tolerance(rtol=1e-4, atol=1e-4))
    assert not c.passed and c.ref_nan == 1 and "reference" in c.reason()


def test_default_tolerances_follow_the_precision():
    f32, f16 = default_tolerance("float32"), default_tolerance("float16")
    assert (f32.rtol, f32.atol_scale) == DEFAULT_TOLERANCES["float32"] == (1e-4, 1e-4)
    assert f16.rtol == 1e-2 and f16.atol_scale == 2e-2 and f16.absolute_atol(10.0) == pytest.approx(0.2)
    given = default_tolerance("float16", atol=1e-6)
    assert given.atol == 1e-6 and given.absolute_atol(10.0) == 1e-6 and given.rtol == 1e-2 and given.source == "given"
    with pytest.raises(InputError):
        default_tolerance("float32", rtol=-1.0)


def test_cuda_counts_as_tf32_unless_turned_off():
    assert compute_precision("float32", "CUDAExecutionProvider", {"use_tf32": "1"})[0] == "tf32"
    assert compute_precision("float32", "CUDAExecutionProvider", {"use_tf32": "0"}) == ("float32", None)
    assert compute_precision("float32", "CUDAExecutionProvider", {})[0] == "tf32"  # onnxruntime without the option
    assert compute_precision("float32", "CPUExecutionProvider", {}) == ("float32", None)
    assert compute_precision("float16", "CUDAExecutionProvider", {"use_tf32": "1"})[0] == "float16"


# ---------------------------------------------------------------------------------------------
# the command line on real exports


def test_faithful_export_passes_with_json(case, run_cli, tmp_path):
    out = tmp_path / "parity.json"
    result = run_cli("parity", case.onnx, case.checkpoint, "--samples", SAMPLES, "--json", out)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "max abs" in result.output and "logits" in result.output
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # like any file the user writes
    report = json.loads(out.read_text())
    assert report["schema"] == "dcd-deploy/parity/1" and report["passed"] is True and report["verdict"] == "pass"
    assert set(report["versions"]) >= {"torch", "onnx", "onnxruntime", "numpy", "dcd_deploy"}
    prov = report["providers"][0]
    assert prov["name"] == "cpu" and prov["provider"] == "CPUExecutionProvider" and prov["device"]
    assert isinstance(prov["options"], dict) and prov["precision"] == "float32"
    logits = prov["outputs"][0]
    assert logits["name"] == "logits" and logits["shape"] == [4, 10]
    assert logits["max_abs_error"] < 1e-3 and logits["top1_agreement"] == 1.0 and logits["nan"] == 0
    assert logits["tolerance"]["rtol"] == 1e-4
    assert logits["tolerance"]["atol"] == pytest.approx(1e-4 * logits["tolerance"]["ref_max_abs"])
    assert logits["smallest_passing_atol"] <= logits["tolerance"]["atol"]
    # the default reference is the float64 evaluation; the trained sample's own float32 error is far below 1e-5,
    # so the noise-aware default stays at the float32 default (1e-4)
    assert report["reference"]["dtype"] == "float64" and report["reference"]["arch"] == "mobilenetv2_dcd"
    assert 0 < logits["tolerance"]["original_float32_error"] == report["reference"]["float32_error"][0] < 1e-5
    assert logits["relative_error"] == pytest.approx(logits["max_abs_error"] / logits["tolerance"]["ref_max_abs"])
    assert "logits relative to max|ref|: file" in result.output and "original float32" in result.output
    assert report["inputs"]["source"] == "random" and report["inputs"]["shape"] == [4, 3, SIZE, SIZE]
    assert report["model"]["metadata"]["dcd_deploy.precision"] == "float32"


def test_conv_weight_changed_by_5_percent_fails_with_exit_1(case, dcd_weight_changed, run_cli, tmp_path):
    out = tmp_path / "parity.json"
    result = run_cli("parity", dcd_weight_changed, case.checkpoint, "--samples", SAMPLES, "--json", out)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "Traceback" not in result.output
    assert "error: Parity failed" in " ".join(result.output.split())
    logits = json.loads(out.read_text())["providers"][0]["outputs"][0]
    assert logits["passed"] is False and logits["violations"] > 0
    assert logits["smallest_passing_atol"] > logits["tolerance"]["atol"]


def test_static_conv_changed_by_5_percent_fails_too(case, stem_weight_changed):
    result = check_parity(stem_weight_changed, case.loaded, samples=4)
    assert not result
    assert not result.providers[0].outputs[0].passed


def test_warn_only_reports_but_exits_0(case, dcd_weight_changed, run_cli):
    result = run_cli("parity", dcd_weight_changed, case.checkpoint, "--samples", SAMPLES, "--warn-only")
    assert result.exit_code == 0, result.output
    assert "FAIL" in result.output and "--warn-only" in result.output


def test_model_producing_nan_fails(case, nan_model, run_cli, tmp_path):
    out = tmp_path / "nan.json"
    result = run_cli("parity", nan_model, case.checkpoint, "--samples", SAMPLES, "--json", out)
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # strict JSON
    logits = report["providers"][0]["outputs"][0]
    assert logits["nan"] > 0 and logits["passed"] is False and logits["smallest_passing_atol"] is None


def test_wrong_input_shape_is_a_usage_error(case, run_cli, expect_user_error, tmp_path):
    bad = tmp_path / "small.npy"
    np.save(bad, np.zeros((4, 3, 32, 32), np.float32))
    result = run_cli("parity", case.onnx, case.checkpoint, "--inputs", bad)
    expect_user_error(result, "small.npy", "(4, 3, 32, 32)", "height 32 instead of 48", "3, 48, 48")


def test_channels_last_inputs_say_how_to_transpose(case, run_cli, expect_user_error, tmp_path):
    bad = tmp_path / "nhwc.npz"
    np.savez(bad, input=np.zeros((2, SIZE, SIZE, 3), np.float32))
    expect_user_error(run_cli("parity", case.onnx, case.checkpoint, "--inputs", bad), "channels last", "np.transpose")


def test_missing_files_are_usage_errors(case, run_cli, expect_user_error, tmp_path):
    expect_user_error(run_cli("parity", tmp_path / "none.onnx", case.checkpoint), "none.onnx", "does not exist")
    expect_user_error(run_cli("parity", case.onnx, tmp_path / "none.pth"), "none.pth", "does not exist")
    expect_user_error(run_cli("parity", case.onnx, case.checkpoint, "--inputs", tmp_path / "none"), "does not exist")
    expect_user_error(run_cli("parity", case.onnx, case.checkpoint, "--json", tmp_path / "no" / "r.json"),
                      "--json", "does not exist")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    expect_user_error(run_cli("parity", junk, case.checkpoint), "junk.onnx", "not a readable ONNX model")


def test_checkpoint_of_another_network_is_a_usage_error(case, run_cli, expect_user_error, tmp_path):
    other = save_reference_checkpoint(build_model(width_mult=0.35), tmp_path / "w035.pth")
    expect_user_error(run_cli("parity", case.onnx, other), "different mobilenetv2_dcd networks", "width_mult")
    # without the export metadata, the output shape gives it away
    five = save_reference_checkpoint(build_model(num_classes=5), tmp_path / "c5.pth")
    bare = without_metadata(case.onnx, tmp_path / "bare.onnx")
    expect_user_error(run_cli("parity", bare, five, "--samples", "2"), "(2, 10)", "(2, 5)", "not the same network")


def test_retrained_checkpoint_is_noted_compared_and_localised(case, tmp_path):
    retrained = save_reference_checkpoint(build_model(seed=1), tmp_path / "retrained.pth")
    result = check_parity(case.onnx, retrained, samples=2, localize=True)
    assert not result  # same architecture, other weights: the deployed model no longer matches
    assert any("different checkpoint file" in note for note in result.notes)
    loc = result.localizations[0]
    assert loc.first.path == FIRST_DCD_LAYER  # the very first layer (and the stem before it) differs
    assert any(f"{len(loc.layers)} of {len(loc.layers)} DCD layers differ" in note for note in loc.notes)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_unavailable_cuda_exits_3_with_install_hint(case, run_cli, expect_user_error):
    result = run_cli("parity", case.onnx, case.checkpoint, "--providers", "cpu,cuda")
    expect_user_error(result, "'cuda'", "onnxruntime-gpu", code=3)


@pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")  # onnxconverter-common truncating tiny weights
def test_fp16_model_uses_loose_defaults_and_overrides_apply(case, tmp_path):
    import onnx

    from dcd_deploy.exporting.pipeline import to_fp16

    half = to_fp16(onnx.load(case.onnx))
    for prop in half.metadata_props:
        if prop.key == "dcd_deploy.precision":
            prop.value = "float16"
    path = tmp_path / "half.onnx"
    onnx.save(half, path)
    result = check_parity(path, case.loaded, samples=4)
    assert result, result.render()
    p = result.providers[0]
    assert result.model_precision == "float16" and p.precision == "float16" and p.tolerance.rtol == 1e-2
    assert p.outputs[0].max_abs_error > 1e-5  # float16 really is less precise than float32 ...
    tight = check_parity(path, case.loaded, samples=4, atol=1e-6, rtol=1e-6)  # ... so float32 tolerances fail it
    assert not tight


def test_reference_in_float64(case):
    result = check_parity(case.onnx, case.loaded, samples=2, reference_dtype="float64")
    assert result and result.to_dict()["reference"]["dtype"] == "float64"


def test_image_folder_inputs(case, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64 + i, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = check_parity(case.onnx, case.loaded, inputs=folder)
    assert result and result.inputs.count == 3 and result.inputs.source == "images"


def test_static_batch_model_runs_in_padded_batches(case, tmp_path):
    static = with_static_batch(case.onnx, tmp_path / "b3.onnx", 3)
    result = check_parity(static, case.loaded, samples=5)  # 3 + 2 (padded to 3)
    assert result and result.batch == 3 and result.providers[0].outputs[0].shape == (5, 10)
    with pytest.raises(InputError, match="fixed at 3"):
        check_parity(static, case.loaded, samples=5, batch=4)


def test_save_io_writes_what_was_compared(case, run_cli, tmp_path):
    folder = tmp_path / "io"
    result = run_cli("parity", case.onnx, case.checkpoint, "--samples", "3", "--save-io", folder)
    assert result.exit_code == 0, result.output
    inputs, ref, cpu = (np.load(folder / f) for f in ("inputs.npy", "reference.logits.npy", "cpu.logits.npy"))
    assert inputs.shape == (3, 3, SIZE, SIZE) and ref.shape == cpu.shape == (3, 10)
    # both float32 outputs are the model's outputs on the saved inputs: each is within float32 rounding of the
    # float64 evaluation (1e-4 of the logits' scale is 10x what float32 rounding gives on this network)
    model64 = copy.deepcopy(case.loaded.model).double().eval()
    with torch.no_grad():
        exact = model64(torch.from_numpy(inputs).double()).numpy()
    bound = 1e-4 * np.abs(exact).max()
    assert np.abs(ref - exact).max() <= bound and np.abs(cpu - exact).max() <= bound
    assert json.loads((folder / "manifest.json").read_text())["cpu.logits"] == "cpu.logits.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["io"]  # no temporary folder left beside it


def test_interrupted_run_leaves_no_output_files(case, tmp_path, monkeypatch):
    """Ctrl-C while the report is written: neither the --json file nor the --save-io folder stays."""
    from dcd_deploy.compare.results import ParityResult

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ParityResult, "to_json", interrupt)
    with pytest.raises(KeyboardInterrupt):
        check_parity(case.onnx, case.loaded, samples=2, save_io_dir=tmp_path / "io", json_path=tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_exits_130_without_output(case, run_cli, tmp_path, monkeypatch):
    from dcd_deploy.compare import parity

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity, "evaluate_reference", interrupt)
    out = tmp_path / "r.json"
    result = run_cli("parity", case.onnx, case.checkpoint, "--samples", "2", "--json", out, "--save-io", tmp_path / "io")
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_usage_errors_and_write_nothing(case, run_cli, expect_user_error, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    expect_user_error(run_cli("parity", case.onnx, case.checkpoint, "--save-io", blocker), "--save-io", "is a file")
    with pytest.raises(OutputError, match="not a folder"):  # the library checks it too, before any work
        check_parity(case.onnx, lambda: pytest.fail("the checkpoint is loaded after the cheap checks"),
                     save_io_dir=blocker)
    # /proc accepts no new files: the run completes, the report cannot be written, the saved arrays are taken back
    result = run_cli("parity", case.onnx, case.checkpoint, "--samples", "2", "--save-io", tmp_path / "io",
                     "--json", "/proc/dcd-deploy-parity.json")
    expect_user_error(result, "Cannot write the --json report", "/proc/dcd-deploy-parity.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_sample_npz_inputs(case, tmp_path):
    path = tmp_path / "inputs.npz"
    np.savez(path, input=np.random.default_rng(1).standard_normal((6, 3, SIZE, SIZE)).astype(np.float32),
             labels=np.arange(6))
    result = check_parity(case.onnx, case.loaded, inputs=path, samples=4)
    assert result and result.inputs.count == 4 and any("first 4 of the 6" in n for n in result.notes)


def test_bad_provider_option_is_a_usage_error(case, run_cli, expect_user_error):
    result = run_cli("parity", case.onnx, case.checkpoint, "--provider-option", "cuda-use_tf32")
    expect_user_error(result, "PROVIDER:KEY=VALUE", "cuda:use_tf32=0")


def test_unknown_provider_is_a_usage_error_listing_the_names(case, run_cli, expect_user_error):
    result = run_cli("parity", case.onnx, case.checkpoint, "--providers", "cpu,foo")
    expect_user_error(result, "'foo'", "cpu, cuda, tensorrt", "CUDAExecutionProvider")


def test_checkpoint_given_as_the_onnx_model_says_so(case, run_cli, expect_user_error):
    result = run_cli("parity", case.checkpoint, case.onnx)
    expect_user_error(result, case.checkpoint.name, "PyTorch checkpoint, not an ONNX model", "swap the arguments")


def test_single_sample_npz_reports_the_shape_in_the_file(case, run_cli, expect_user_error, tmp_path):
    bad = tmp_path / "digits.npz"
    np.savez(bad, input=np.zeros((16, SIZE, SIZE), np.float32))  # N×H×W grey digits, no channel axis
    result = run_cli("parity", case.onnx, case.checkpoint, "--inputs", bad)
    flat = expect_user_error(result, "digits.npz", f"(16, {SIZE}, {SIZE})", "one C×H×W sample", "channels 16 instead of 3")
    assert f"(1, 16, {SIZE}, {SIZE})" not in flat


def test_options_travel_as_one_dataclass(case):
    options = ParityOptions(samples=2, reference_dtype="float64")
    result = check_parity(case.onnx, case.loaded, options, providers="cpu")  # keywords apply over the options
    assert result and result.inputs.count == 2 and result.reference["dtype"] == "float64"
    with pytest.raises(TypeError):
        check_parity(case.onnx, case.loaded, sample=2)  # a misspelt option is not silently ignored


def test_json_to_stdout_keeps_the_table_off_stdout(case, run_cli):
    result = run_cli("parity", case.onnx, case.checkpoint, "--samples", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
    assert "max abs" in result.stderr


def test_example_workflow_uses_real_options():
    """The GitHub Actions example must not drift from the command line it calls."""
    from dcd_deploy_cli.main import cli

    text = (Path(__file__).resolve().parents[2] / "examples" / "github-actions-parity.yml").read_text()
    used = set()
    for line in text.replace("\\\n", " ").splitlines():  # continuation lines joined
        for call in line.split("dcd-deploy ")[1:]:
            words = call.split("|")[0].split("#")[0].split()
            if words:
                used |= {(words[0], w.split("=")[0]) for w in words[1:] if w.startswith("--")}
    assert ("parity", "--providers") in used and ("parity", "--json") in used
    for name, option in used:
        command = cli.commands.get(name)
        if command is None:
            continue  # a command another part of the toolkit has not shipped yet
        known = {opt for param in command.params for opt in param.opts}
        assert option in known, f"the workflow passes {option} to `dcd-deploy {name}`, which has no such option"


# ---------------------------------------------------------------------------------------------
# localisation


def test_localize_finds_the_changed_dcd_layer(case, dcd_weight_changed, dcd_kernel, run_cli, tmp_path):
    out = tmp_path / "loc.json"
    result = run_cli("parity", dcd_weight_changed, case.checkpoint, "--samples", SAMPLES, "--localize", "--json", out)
    assert result.exit_code == 1, result.output
    assert f"first diverging DCD layer: {DCD_LAYER}" in " ".join(result.output.split())
    loc = json.loads(out.read_text())["localization"][0]
    first = loc["first_diverging_layer"]
    assert first["path"] == DCD_LAYER
    assert first["input_error"] < loc["threshold"] < first["output_error"]
    assert [w["initializer"] for w in loc["weight_differences"]] == [dcd_kernel]
    assert loc["weight_differences"][0]["relative_difference"] == pytest.approx(0.05, rel=1e-3)
    assert any(f"1 of {len(loc['layers'])} DCD layers differ" in note for note in loc["notes"])
    # every layer before it matched
    before = loc["layers"][:[layer["path"] for layer in loc["layers"]].index(DCD_LAYER)]
    assert before and all(layer["output_error"] < loc["threshold"] for layer in before)


def test_localize_blames_the_static_ops_before_the_first_dcd_layer(case, stem_weight_changed):
    result = check_parity(stem_weight_changed, case.loaded, samples=4, localize=True)
    loc = result.localizations[0]
    assert loc.first.path == FIRST_DCD_LAYER and loc.previous is None
    assert loc.first.input_error > loc.threshold
    assert "already differs" in loc.verdict and "network input" in loc.verdict


def test_localize_on_a_passing_model_says_so(case):
    result = check_parity(case.onnx, case.loaded, samples=2, localize=True)
    assert result and not result.localizations
    assert any("no divergence to localise" in n for n in result.notes)


# ---------------------------------------------------------------------------------------------
# the pytest helper


def test_assert_parity_passes_and_fails_with_the_table(case, dcd_weight_changed):
    result = assert_parity(case.onnx, case.checkpoint, samples=2)
    assert result.passed
    with pytest.raises(AssertionError) as info:
        assert_parity(dcd_weight_changed, case.loaded, samples=2)
    assert "max abs" in str(info.value) and "FAIL" in str(info.value)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_assert_parity_unavailable_provider(case):
    with pytest.raises(ProviderUnavailableError):
        assert_parity(case.onnx, case.loaded, providers="cuda")
    with pytest.raises(pytest.skip.Exception):
        assert_parity(case.onnx, case.loaded, providers="cuda", skip_unavailable=True)


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with a CUDA device")
def test_cuda_parity_with_sane_defaults(case, run_cli, tmp_path):
    out = tmp_path / "cuda.json"
    result = run_cli("parity", case.onnx, case.checkpoint, "--providers", "cpu,cuda", "--json", out)
    assert result.exit_code == 0, result.output
    cuda = json.loads(out.read_text())["providers"][1]
    assert cuda["provider"] == "CUDAExecutionProvider" and cuda["device"]
    assert cuda["options"]["cudnn_conv_algo_search"] == "HEURISTIC"  # dynamic batch axis
    assert cuda["precision"] in ("tf32", "float32")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with a CUDA device")
def test_cuda_catches_the_changed_weight_in_tf32_and_float32(case, dcd_weight_changed):
    default = check_parity(dcd_weight_changed, case.loaded, providers="cuda", samples=4)
    assert not default
    full = check_parity(dcd_weight_changed, case.loaded, providers="cuda", samples=4,
                        provider_options={"cuda": {"use_tf32": "0"}})
    assert not full and full.providers[0].precision == "float32"
    assert check_parity(case.onnx, case.loaded, providers="cuda", samples=4, provider_options={"cuda": {"use_tf32": "0"}})


def test_a_tf32_failure_says_how_to_tell_rounding_from_a_bug(case, dcd_weight_changed, run_cli, monkeypatch):
    """Seen on an H200: resnet50_dcd failed the tf32 default and passed with use_tf32=0. The message
    must point there (simulated here by counting the CPU as TF32 with float32 tolerances)."""
    from dcd_deploy.compare import runs, tolerance

    monkeypatch.setattr(runs, "compute_precision", lambda precision, provider, options: ("tf32", "simulated"))
    monkeypatch.setitem(tolerance.DEFAULT_TOLERANCES, "tf32", tolerance.DEFAULT_TOLERANCES["float32"])
    result = run_cli("parity", dcd_weight_changed, case.checkpoint, "--samples", SAMPLES)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = " ".join(result.output[result.output.index("error:"):].split())
    for fragment in ("TF32", "--provider-option cpu:use_tf32=0", "TF32 rounding", "--localize"):
        assert fragment in error, error
