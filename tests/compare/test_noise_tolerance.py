"""parity's noise-aware default tolerance (issue 18, item 6).

By default the reference is the ORIGINAL network evaluated in float64, and each output's default
rtol and atol/max|ref| are max(the precision's default, 10 × the original's own float32 error on the
same samples). A deep random DyConv ResNet whose float32 error exceeds 1e-5 passes; a 0.1 % weight
change still fails; a network that cannot run in float64 falls back to float32 and the fixed
tolerance, with a note (or a usage error when float64 was asked for).
"""

from __future__ import annotations

import copy

import pytest
import torch
from family_nets import NOISY_SIZE, Float32Inside, deep_random_dyconv
from family_nets import build as build_family

from dcd_deploy.compare.parity import check_parity
from dcd_deploy.compare.tolerance import DEFAULT_TOLERANCES, default_tolerance
from dcd_deploy.errors import InputError
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.runtime.float64 import noise_allowance


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    model = deep_random_dyconv()
    path = tmp_path_factory.mktemp("noisy") / "deep_dyconv.onnx"
    export(model, path, input_size=NOISY_SIZE, self_check=False)
    return model, path


def test_default_tolerance_allows_ten_times_the_originals_float32_error():
    assert default_tolerance("float32", noise=3e-5).rtol == pytest.approx(3e-4)
    assert default_tolerance("float32", noise=3e-5).atol_scale == pytest.approx(3e-4)
    assert (default_tolerance("float32", noise=1e-7).rtol, default_tolerance("float32", noise=1e-7).atol_scale) \
        == DEFAULT_TOLERANCES["float32"]
    f16 = default_tolerance("float16", noise=1e-3)  # the looser precisions keep their defaults as the floor
    assert (f16.rtol, f16.atol_scale) == (pytest.approx(1e-2), pytest.approx(2e-2))
    assert default_tolerance("float16", noise=5e-3).atol_scale == pytest.approx(5e-2)
    given = default_tolerance("float32", rtol=1e-6, noise=1e-3)  # the user's tolerance is used as given
    assert given.rtol == 1e-6 and given.atol_scale == 1e-4 and given.source == "given" and given.noise is None


def test_a_deep_random_network_passes_within_its_own_float32_error(noisy):
    model, path = noisy
    result = check_parity(path, model, samples=4)
    assert result, result.render()
    logits = result.providers[0].outputs[0]
    assert result.reference["dtype"] == "float64" and logits.noise > 1e-5
    assert logits.rtol == pytest.approx(noise_allowance(1e-4, logits.noise))
    assert logits.atol == pytest.approx(noise_allowance(1e-4, logits.noise) * logits.ref_scale)
    assert "original float32" in result.render() and "allowed" in result.render()
    report = result.to_dict()["providers"][0]["outputs"][0]
    assert report["tolerance"]["original_float32_error"] == logits.noise and report["relative_error"] is not None


def test_a_0_1_percent_weight_change_fails_parity(noisy):
    model, path = noisy
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.layer1[0].conv1.weight.mul_(1.001)
    assert not check_parity(path, changed, samples=4)


def test_a_network_that_cannot_run_in_float64_is_compared_in_float32_with_a_note(tmp_path):
    model = Float32Inside(build_family("dyconv")).eval()
    path = tmp_path / "f32.onnx"
    export(model, path, input_size=48, self_check=False)
    result = check_parity(path, model, samples=2)
    assert result and result.reference["dtype"] == "float32" and result.providers[0].outputs[0].noise is None
    assert any("float32 only" in note for note in result.notes)
    assert result.providers[0].outputs[0].rtol == DEFAULT_TOLERANCES["float32"][0]
    with pytest.raises(InputError, match="float64"):
        check_parity(path, model, samples=2, reference_dtype="float64")
