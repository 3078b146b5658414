"""The exported graph keeps its batch symbol: ONNX shape inference sees dimension 0 as ``batch`` throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dcd_deploy import export, load_model
from dcd_deploy.exporting.graphcheck import batch_independent
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "mobilenetv2_dcd_w035_digits.pth"


def batch_share(path: Path) -> tuple[int, int]:
    """(4-D intermediate tensors whose dimension 0 is ``batch``, all 4-D intermediate tensors)."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    dims = [vi.type.tensor_type.shape.dim for vi in graph.value_info]
    four = [d for d in dims if len(d) == 4]
    return sum(1 for d in four if d[0].dim_param == "batch"), len(four)


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(create_model("resnet18_dcd", num_classes=10), 40)


@pytest.mark.parametrize("which", ["sample_mobilenetv2", "resnet18_dcd"])
def test_nine_in_ten_4d_tensors_keep_the_batch_symbol_and_batches_agree(which, tmp_path):
    if which == "sample_mobilenetv2":
        model, size = load_model(SAMPLE), 48
        original = model.model.eval()
    else:
        model = original = _resnet18()
        size = 40
    result = export(model, tmp_path / "m.onnx", input_size=size, self_check=False)
    kept, total = batch_share(result.path)
    assert total > 50 and kept / total >= 0.9, f"{kept}/{total} 4-D tensors keep `batch`"
    assert batch_independent(onnx.load(result.path), None) == []
    run = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref64 = original.double()(torch.from_numpy(x).double()).numpy()
    scale = np.abs(ref64).max()
    three = run.run(None, {"input": x})[0]
    one = np.concatenate([run.run(None, {"input": x[i:i + 1]})[0] for i in range(3)])
    assert np.abs(three - ref64).max() / scale < 1e-5 and np.abs(one - ref64).max() / scale < 1e-5
