"""Export of CondConv / DyConv / ODConv networks through the options every export has.

The lowering tests (tests/lowering/test_{condconv,dyconv,odconv}.py) prove each layer and form
exact at batch 1, 3 and 8; here: the command line with ``--model`` on a bundled sample, ``--fp16``
and ``--dynamic-size`` on a small network of each family, and a dynamic convolution of no family.
Exactness is the export issue's bound against the float64 evaluation of the original network:
relative error ≤ max(1e-4, 10 × the network's own float32 noise).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime
import pytest
import torch
from family_nets import NETWORKS, REPO_ROOT, SIZE, build

from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.result import SELF_CHECK_RTOL
from dcd_deploy.lowering import relative_error
from dcd_deploy.runtime.float64 import noise_allowance


def float64_bound(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """The float64 output of ``model`` on ``x`` and the allowed relative error of a float32 result."""
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out64 = ref(x.double())
        noise = relative_error(model(x.float()), out64)
    return out64.numpy(), noise_allowance(SELF_CHECK_RTOL["float32"], noise)


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy().astype(np.float32)})[0]


def assert_exact(path, model: torch.nn.Module, x: torch.Tensor) -> None:
    out64, bound = float64_bound(model, x)
    got = run_onnx(path, x)
    assert got.shape == out64.shape
    err = relative_error(torch.from_numpy(got), torch.from_numpy(out64))
    assert err <= bound, f"batch {x.shape[0]} {tuple(x.shape[2:])}: relative error {err:.2e} > {bound:.2e}"


def test_cli_export_of_the_dyconv_sample_is_exact_at_batch_1_3_8(run_cli, tmp_path):
    from dcd_deploy import load_model

    options = {"layers": [1, 1, 1, 1], "num_classes": 10, "width": 8, "temperature": 1}
    loading = ["--model", "sample_models.dynamic_nets:dy_resnet"]
    for key, value in options.items():
        loading += ["--model-arg", f"{key}={json.dumps(value).replace(' ', '')}"]
    checkpoint = REPO_ROOT / "sample_models" / "dy_resnet10_digits.pth"
    path = tmp_path / "dy.onnx"
    result = run_cli("export", checkpoint, "-o", path, "--input-size", SIZE, "--quiet", *loading)
    assert result.exit_code == 0, result.output
    assert "8/8 dynamic layers lowered" in result.output and "PASS" in result.output
    model = load_model(checkpoint, model_factory="sample_models.dynamic_nets:dy_resnet", model_args=options).model
    data = torch.from_numpy(np.load(REPO_ROOT / "sample_models" / "inputs.npz")["input"][:8])
    for batch in (1, 3, 8):
        assert_exact(path, model, data[:batch])


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_fp16_export_passes_its_self_check_and_runs(family, tmp_path):
    model = build(family)
    path = tmp_path / f"{family}_fp16.onnx"
    result = export(model, path, input_size=SIZE, fp16=True)
    assert result and result.self_check.tolerance == SELF_CHECK_RTOL["float16"]
    assert result.metadata["dcd_deploy.precision"] == "float16"
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    got = run_onnx(path, x)
    out64, _ = float64_bound(model, x)
    assert np.isfinite(got).all()
    assert relative_error(torch.from_numpy(got), torch.from_numpy(out64)) <= SELF_CHECK_RTOL["float16"]


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_dynamic_size_export_is_exact_at_two_sizes_and_two_batches(family, tmp_path):
    model = build(family)
    path = tmp_path / f"{family}_dynsize.onnx"
    result = export(model, path, input_size=SIZE, dynamic_size=True)
    assert result and result.metadata["dcd_deploy.dynamic_size"] == "true"
    generator = torch.Generator().manual_seed(3)
    for hw in ((48, 48), (40, 56)):
        for batch in (1, 3):
            assert_exact(path, model, torch.randn(batch, 3, *hw, generator=generator))


@pytest.fixture
def hyper_checkpoint(tmp_path):
    from family_nets import hyper_net

    torch.manual_seed(0)
    path = tmp_path / "hyper.pth"
    torch.save(hyper_net().state_dict(), path)
    return path


def test_a_dynamic_convolution_of_no_family_stops_export(run_cli, expect_user_error, hyper_checkpoint, tmp_path):
    """A per-sample kernel applied by a Python loop: neither a family nor the batch-folded idiom."""
    out = tmp_path / "hyper.onnx"
    result = run_cli("export", hyper_checkpoint, "-o", out, "--input-size", 32, "--quiet", "--model",
                     "family_nets:loop_hyper_net")
    text = expect_user_error(result, "0.hyper: LoopHyperConv computes its convolution weight from the input",
                             "one convolution per sample", "batch-folded grouped convolution", code=2)
    assert "graph(" not in text and "%" not in text  # no IR dump
    assert text.count("error:") == 1
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


def test_inspect_lists_a_dynamic_convolution_of_no_family(run_cli, hyper_checkpoint):
    args = ("--input-size", 32, "--model", "family_nets:loop_hyper_net")
    result = run_cli("inspect", hyper_checkpoint, *args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dynamic_layers"] == []
    (unmatched,) = report["unmatched_layers"]
    assert unmatched["path"] == "0.hyper" and unmatched["family"] == "generic"
    assert "LoopHyperConv computes its convolution weight from the input" in unmatched["reason"]
    assert "one convolution per sample (2 calls at batch 2, 3 at batch 3" in unmatched["reason"]
    text = run_cli("inspect", hyper_checkpoint, *args).output
    assert "0.hyper: LoopHyperConv computes its convolution weight" in " ".join(text.split())


def test_the_batch_folded_hyper_convolution_exports_through_the_generic_family(run_cli, hyper_checkpoint, tmp_path):
    from family_nets import hyper_net

    out = tmp_path / "hyper.onnx"
    result = run_cli("export", hyper_checkpoint, "-o", out, "--input-size", 32, "--quiet", "--model",
                     "family_nets:hyper_net")
    assert result.exit_code == 0, result.output
    assert "1/1 dynamic layers lowered" in result.output
    model = hyper_net().eval()
    model.load_state_dict(torch.load(hyper_checkpoint))
    for batch in (1, 3, 8):
        assert_exact(out, model, torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)))


def test_recognised_families_are_not_reported_as_unknown(tmp_path):
    """The scan for computed weights leaves the recognised layers to their families."""
    from dcd_deploy.lowering import find_dynamic_layers
    from dcd_deploy.lowering.computed_weights import computed_weight_modules

    for family in NETWORKS:
        model = build(family)
        x = torch.randn(2, 3, SIZE, SIZE)
        known = [f.path for f in find_dynamic_layers(model)]
        found = computed_weight_modules(model, x)
        assert set(found) == set(known)  # every family layer computes its weight from the input...
        assert computed_weight_modules(model, x, known) == {}  # ...and is left out once recognised
        assert all(p.requires_grad for p in model.parameters())
