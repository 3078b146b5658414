"""The portable graph is portable: the default export of every bundled sample runs on OpenVINO and tract.

Each runtime's output is compared with the float64 evaluation of the original PyTorch network, and
ONNX Runtime's output with the same reference, so the bound measures the runtime, not one float32
result against another. Skipped per runtime when it is not installed; tract runs in a subprocess
with a time limit, so a graph it cannot settle fails instead of hanging.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dcd_deploy import export, load_model
from dcd_deploy.runtime.float64 import noise_allowance
from dcd_deploy.runtime.session import create_session

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
NETS = "sample_models.dynamic_nets"
# name -> loading keywords (as .ci/run and the README load them)
CASES = {
    "mobilenetv2_dcd_w025_digits": {},
    "efficientnet_cc_digits": {"model_factory": f"{NETS}:efficientnet_cc", "model_args": {
        "num_classes": 10, "width_mult": 0.25, "depth_mult": 0.25, "num_features": 256, "drop_rate": 0.1}},
    "od_resnet10_digits": {"model_factory": f"{NETS}:od_resnet", "model_args": {
        "layers": [1, 1, 1, 1], "num_classes": 10, "width": 8}},
}
TRACT_LIMIT_S = 120
TRACT_RUN = textwrap.dedent('''
    import sys, numpy as np, tract
    x = np.load(sys.argv[2])
    model = tract.onnx().load(sys.argv[1]).into_model().into_runnable()
    np.save(sys.argv[3], model.run([x])[0].to_numpy())
''')


def _relative(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    monkey = pytest.MonkeyPatch()
    monkey.syspath_prepend(str(ROOT))
    try:
        loaded = load_model(SAMPLES / f"{request.param}.pth", **CASES[request.param])
    finally:
        monkey.undo()
    path = tmp_path_factory.mktemp("second") / f"{request.param}.onnx"
    export(loaded, path, input_size=48, self_check=False)
    x = np.load(SAMPLES / "inputs.npz")["input"][:3]
    with torch.no_grad():
        ref64 = copy.deepcopy(loaded.model).double()(torch.from_numpy(x).double()).numpy()
        ref32 = loaded.model(torch.from_numpy(x)).double().numpy()
    ort = create_session(path, "cpu").run(None, {"input": x})[0]
    # the runtimes may differ from float64 by float32 round-off: 10× what PyTorch's float32 itself shows
    bound = noise_allowance(1e-4, _relative(ref32, ref64))
    assert _relative(ort, ref64) <= bound
    return path, x, ref64, bound


def test_openvino_runs_the_portable_graph_in_float32(exported):
    ov = pytest.importorskip("openvino")
    path, x, ref64, bound = exported
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 3):  # one dynamic-batch file, two batch sizes
        out = np.asarray(compiled(x[:batch])[compiled.output(0)])
        assert _relative(out, ref64[:batch]) <= bound, batch


def test_tract_runs_the_portable_graph(exported, tmp_path):
    pytest.importorskip("tract")
    path, x, ref64, bound = exported
    if any(node.op_type == "Loop" for node in onnx.load(str(path)).graph.node):
        pytest.skip("tract implements no ONNX Loop: the per-sample `loop` form runs on ONNX Runtime and OpenVINO only")
    np.save(tmp_path / "x.npy", x)
    try:
        subprocess.run([sys.executable, "-c", TRACT_RUN, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       check=True, capture_output=True, timeout=TRACT_LIMIT_S)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"tract failed on {path.name}: {exc.stderr.decode(errors='replace')[-2000:]}")
    assert _relative(np.load(tmp_path / "y.npy"), ref64) <= bound
