"""The float64 evaluation of the original network and the allowance for its own float32 error."""

from __future__ import annotations

import math

import pytest
import torch
from family_nets import Float32Inside
from family_nets import build as build_family

from dcd_deploy.runtime.float64 import NOISE_FACTOR, Float64Unavailable, noise_allowance, run_float64


def test_the_allowance_is_the_base_or_ten_times_the_noise():
    assert NOISE_FACTOR == 10
    assert noise_allowance(1e-4, 1e-6) == 1e-4 and noise_allowance(1e-4, 3e-5) == pytest.approx(3e-4)
    assert noise_allowance(5e-2, 1e-3) == 5e-2  # float16's floor
    assert noise_allowance(1e-4, None) == 1e-4 and noise_allowance(1e-4, math.nan) == 1e-4


def test_a_float64_copy_runs_and_leaves_the_network_as_it_was():
    model = build_family("dyconv")
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    out = run_float64(model, lambda twin: twin(x.double()))
    assert out.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(out.float(), model(x), rtol=1e-4, atol=1e-4 * float(out.abs().max()))


def test_a_network_that_makes_float32_tensors_is_float64_unavailable_with_the_reason():
    model = Float32Inside(build_family("dyconv")).eval()
    with pytest.raises(Float64Unavailable, match="does not run in float64"):
        run_float64(model, lambda twin: twin(torch.zeros(1, 3, 48, 48, dtype=torch.float64)))
