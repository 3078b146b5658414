"""Row runners (ONNX Runtime, PyTorch eager) and the one-line exception summaries they report."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from dcd_deploy.errors import summarize_exception
from dcd_deploy.runtime.runners import OrtRunner, TorchRunner, ort_missing, torch_missing
from dcd_deploy.runtime.timing import RowUnavailable, measure_interleaved

CUDA_HERE = "CUDAExecutionProvider" in ort.get_available_providers()


def _affine_model(shape: list) -> bytes:
    """y = 2·x + 1 (exact in float32 for the inputs below), input ``shape`` (strings: symbolic axes)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _x(batch: int = 2) -> np.ndarray:
    # small integers and halves: 2·x + 1 is exact in float32, so the float64 evaluation is the reference
    return (np.arange(batch * 3 * 4 * 4, dtype=np.float32).reshape(batch, 3, 4, 4) % 7 - 3) / 2


def test_ort_runner_computes_the_model_and_is_timed_interleaved():
    x = _x()
    runner = OrtRunner("affine", _affine_model(["batch", 3, 4, 4]), x, "CPUExecutionProvider", threads=1)
    (m,) = measure_interleaved([runner], warmup=1, runs=3, threads=1)
    assert m.measured and m.stats.count == 3 and m.setup_s > 0 and m.batch == 2
    np.testing.assert_array_equal(runner.output().astype(np.float64), 2 * x.astype(np.float64) + 1)
    runner.close()
    assert runner.session is None


def test_ort_runner_says_when_the_input_does_not_fit():
    runner = OrtRunner("affine", _affine_model([1, 3, 4, 4]), _x(batch=2), "CPUExecutionProvider", threads=1)
    with pytest.raises(RowUnavailable, match="does not fit"):
        runner.setup()
    assert not runner.provider_failed  # the model does not fit; the provider is fine


@pytest.mark.skipif(CUDA_HERE, reason="CUDA is available here")
def test_missing_provider_is_a_skip_not_a_failure():
    assert "CUDAExecutionProvider" in (ort_missing("CUDAExecutionProvider") or "")
    runner = OrtRunner("affine", _affine_model(["batch", 3, 4, 4]), _x(), "CUDAExecutionProvider", threads=1)
    with pytest.raises(RowUnavailable):
        runner.setup()
    assert runner.provider_failed
    if not torch.cuda.is_available():
        assert "cannot use CUDA" in torch_missing("CUDAExecutionProvider")
    assert ort_missing("CPUExecutionProvider") is None and torch_missing("CPUExecutionProvider") is None


def test_torch_runner_runs_on_cpu_and_reports_a_failing_forward():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 3).eval()
    x = _x()
    runner = TorchRunner("conv", model, x, "cpu", cache={})
    runner.setup()
    with torch.inference_mode():
        runner.run()
        expected = model.double()(torch.from_numpy(x).double()).numpy()
    # float32 against the float64 evaluation of the same weights: 27-term sums of values below ~3
    np.testing.assert_allclose(runner.output(), expected, rtol=0, atol=27 * 3 * 1e-6)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shapes do not match\nthe rest of a long message")

    broken = TorchRunner("broken", Broken(), x, "cpu", cache={})
    broken.setup()
    with pytest.raises(RowUnavailable) as info:
        broken.run()
    assert info.value.reason == "PyTorch failed to run it: RuntimeError: shapes do not match"


# ----------------------------------------------------------------------------------------------
# summarize_exception: the reason a row reports


def test_summary_of_an_empty_message_is_the_type():
    assert summarize_exception(RuntimeError()) == "RuntimeError"
    assert summarize_exception(ValueError("\n  \n")) == "ValueError"


def test_summary_keeps_the_first_line_without_colour_or_boilerplate():
    exc = RuntimeError("\x1b[31mbad layer\x1b[0m Please feel free to request support\nsecond line")
    assert summarize_exception(exc) == "RuntimeError: bad layer"
    assert summarize_exception(ValueError("x" * 50), limit=10) == "ValueError: " + "x" * 9 + "…"


def test_summary_names_the_root_cause_of_a_wrapped_exception():
    def wrapped(message: str, cause: BaseException) -> Exception:
        try:
            raise RuntimeError(message) from cause
        except RuntimeError as exc:
            return exc

    exc = wrapped("Failed to export. Read the log.", KeyError("data-dependent branch"))
    assert summarize_exception(exc) == "RuntimeError: Failed to export (KeyError: 'data-dependent branch')"
    assert summarize_exception(wrapped("", ValueError())) == "RuntimeError: (ValueError)"
