"""An --input-size whose example tensors cannot fit in memory is a usage error (exit 2) before any work.

The memory available is patched to 8 GiB, so no verdict here depends on the machine's memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcd_deploy.errors import InputError
from dcd_deploy.runtime import inputs
from dcd_deploy.runtime.inputs import available_memory, check_input_memory, load_inputs
from dcd_deploy.runtime.onnxfile import InputSpec

GIB = 2 ** 30
CHECKPOINT = str(Path(__file__).resolve().parents[2] / "sample_models" / "mobilenetv2_dcd_w025_digits.pth")
HUGE = "100000"  # one 3×100000×100000 float32 sample is 120 GB


@pytest.fixture
def eight_gib(monkeypatch):
    monkeypatch.setattr(inputs, "available_memory", lambda: 8 * GIB)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a checkpoint fails the test: the size check must come first."""
    from dcd_deploy.load import model

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the input size was checked")

    monkeypatch.setattr(model, "load_model", refuse)


def test_the_bytes_needed_are_counted_and_compared_with_what_is_available(eight_gib):
    assert check_input_memory(3, 3, (224, 224), 12) == 3 * 3 * 224 * 224 * 12
    with pytest.raises(InputError) as info:
        check_input_memory(4, 3, (100000, 100000), 12, "the export's example inputs")
    message = str(info.value)
    assert "1,440,000,000,000 bytes" in message and f"{8 * GIB:,} bytes" in message
    assert "--input-size 100000x100000" in message and "smaller --input-size" in message


def test_no_check_when_the_available_memory_is_unknown(monkeypatch):
    monkeypatch.setattr(inputs, "available_memory", lambda: None)
    assert check_input_memory(1, 3, (100000, 100000)) == 120_000_000_000


def test_available_memory_reads_this_machine():
    found = available_memory()
    assert found is None or found > 0


@pytest.mark.parametrize("command", [
    ["export", CHECKPOINT, "-o", "{tmp}/x.onnx"],
    ["inspect", CHECKPOINT],
    ["bench", CHECKPOINT],
])
def test_every_command_taking_an_input_size_refuses_one_that_cannot_fit(command, run_cli, expect_user_error, eight_gib,
                                                                        no_loading, tmp_path):
    result = run_cli(*[part.format(tmp=tmp_path) for part in command], "--input-size", HUGE)
    flat = expect_user_error(result, "--input-size 100000x100000 is too large", "bytes", "smaller --input-size")
    assert "MemoryError" not in flat and not list(tmp_path.iterdir())


def test_parity_and_evaluate_inputs_are_checked_before_they_are_made(eight_gib, tmp_path):
    spec = InputSpec("input", (None, 3, None, None), np.dtype(np.float32))  # dynamic H and W: --input-size decides
    with pytest.raises(InputError, match="random inputs alone would need"):
        load_inputs(None, spec, input_size=(100000, 100000))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    with pytest.raises(InputError, match="resized to 100000x100000 alone would need"):
        load_inputs(folder, spec, input_size=(100000, 100000))
    assert load_inputs(None, spec, samples=2, input_size=(8, 8)).data.shape == (2, 3, 8, 8)
