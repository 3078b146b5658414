"""A ``--dynamic-size`` export loads and runs in tract (the Rust engine), at sizes other than the export's.

Skipped when the ``tract`` Python binding is not installed. tract's loading runs in a subprocess
with a time limit, so a graph whose shape arithmetic tract cannot settle fails instead of hanging
(the sample network's dynamic-size graph used to keep tract's analysis busy for minutes: its
pools averaged over symbolic extents; see ``dcd_deploy/lowering/pooling.py``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dcd_deploy import export, load_model
from dcd_deploy.exporting.result import SELF_CHECK_RTOL
from dcd_deploy.zoo.calibration import calibrate_batchnorm
from dcd_deploy.zoo.layers import DYCls, DYModule, conv_dy

pytest.importorskip("tract")

LOAD_LIMIT_S = 60  # the small network below: well under a second
SAMPLE_LIMIT_S = 90  # the sample network: about 2 s (load, analyse, optimise, two runs) on a 2-core machine
SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "mobilenetv2_dcd_w035_digits.pth"

RUN_IN_TRACT = textwrap.dedent('''
    import sys, numpy as np, tract
    model = tract.onnx().load(sys.argv[1]).into_model().into_runnable()
    for name in sys.argv[2:]:
        x = np.load(name)
        np.save(name + ".out.npy", model.run([x])[0].to_numpy())
''')


def run_in_tract(path: Path, inputs: list[np.ndarray], tmp_path: Path, limit_s: float) -> list[np.ndarray]:
    """``path``'s outputs for ``inputs`` in tract, loaded once in a subprocess that may take ``limit_s`` seconds."""
    names = []
    for i, x in enumerate(inputs):
        names.append(str(tmp_path / f"x{i}.npy"))
        np.save(names[-1], x)
    try:
        done = subprocess.run([sys.executable, "-c", RUN_IN_TRACT, str(path), *names], capture_output=True,
                              text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tract did not load and run the --dynamic-size export within {limit_s} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return [np.load(name + ".out.npy") for name in names]


def relative_to_float64(out: np.ndarray, ref64: np.ndarray) -> float:
    """Largest deviation of a float32 result from the float64 evaluation, relative to the largest output."""
    assert out.shape == ref64.shape
    return float(np.abs(out - ref64).max() / np.abs(ref64).max())


class SmallDynamicNet(nn.Module):
    """Both DCD pools (2×2 in DYModule, 1×1 in conv_dy), both forms, a residual and the head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.expand = DYModule(16, 32, fc_squeeze=8)
        self.bn1 = nn.BatchNorm2d(32)
        self.block = conv_dy(32, 32, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(32)
        self.project = DYModule(32, 32, fc_squeeze=8)
        self.bn3 = nn.BatchNorm2d(32)
        self.head = DYCls(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.expand(self.stem(x))))
        x = torch.relu(self.bn2(self.block(x)))
        x = x + self.bn3(self.project(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("form", ["factored", "merged"])
def test_dynamic_size_export_loads_in_tract_and_matches_pytorch(form, tmp_path):
    torch.manual_seed(0)
    net = calibrate_batchnorm(SmallDynamicNet(), 40).eval()
    path = export(net, tmp_path / "m.onnx", input_size=40, dynamic_size=True, form=form, self_check=False).path
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in [(2, 3, 40, 40), (1, 3, 33, 47)]]
    outputs = run_in_tract(path, inputs, tmp_path, LOAD_LIMIT_S)
    net = net.double()
    for x, out in zip(inputs, outputs):
        with torch.no_grad():
            ref64 = net(torch.from_numpy(x).double()).numpy()
        assert relative_to_float64(out, ref64) < 1e-5


def test_sample_network_dynamic_size_export_loads_in_tract_at_two_sizes(tmp_path):
    # 33 DCD layers (16 with a 2×2 pool, 16 with a 1×1 pool, the head), inverted residuals, strides 2
    model = load_model(SAMPLE)
    path = export(model, tmp_path / "m.onnx", input_size=48, dynamic_size=True, self_check=False).path
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in [(2, 3, 48, 48), (1, 3, 40, 56)]]
    outputs = run_in_tract(path, inputs, tmp_path, SAMPLE_LIMIT_S)
    network = model.model.eval().double()
    for x, out in zip(inputs, outputs):
        with torch.no_grad():
            ref64 = network(torch.from_numpy(x).double()).numpy()
        # measured 7e-6 and 6e-7 (PyTorch in float32: 7e-6 and 1e-6); the export's own float32 bound
        assert relative_to_float64(out, ref64) < SELF_CHECK_RTOL["float32"]
