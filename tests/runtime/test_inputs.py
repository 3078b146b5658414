"""Input sources for parity checks, on tiny hand-made ONNX graphs (no export needed)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dcd_deploy.errors import InputError
from dcd_deploy.runtime.inputs import IMAGENET_MEAN, IMAGENET_STD, batches, input_spec, load_inputs, parse_size


def graph(shape, elem=TensorProto.FLOAT, size: str | None = None, extra_input: bool = False) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("input", elem, shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", elem, shape))
    out = helper.make_tensor_value_info("logits", elem, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", inputs, [out]))
    if size:
        model.metadata_props.add(key="dcd_deploy.input_size", value=size)
    return model


STATIC = input_spec(graph(["batch", 3, 8, 6]))


def test_spec_reads_the_graph_input():
    assert STATIC.name == "input" and STATIC.shape == (None, 3, 8, 6) and STATIC.dtype == np.float32
    assert STATIC.static_hw == (8, 6) and STATIC.static_batch is None and STATIC.dynamic
    dyn = input_spec(graph([2, 3, "h", "w"], size="32x16"))
    assert dyn.static_hw is None and dyn.metadata_size == (32, 16) and dyn.static_batch == 2


def test_spec_rejects_models_it_cannot_feed():
    with pytest.raises(InputError, match="2 inputs"):
        input_spec(graph(["n", 3, 8, 8], extra_input=True))
    with pytest.raises(InputError, match="INT64"):
        input_spec(graph(["n", 3, 8, 8], elem=TensorProto.INT64))


def test_random_inputs_are_seeded_and_sized_by_the_model():
    a = load_inputs(None, STATIC, samples=3, seed=7)
    b = load_inputs(None, STATIC, samples=3, seed=7)
    c = load_inputs(None, STATIC, samples=3, seed=8)
    assert a.data.shape == (3, 3, 8, 6) and a.data.dtype == np.float32 and a.source == "random"
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    assert load_inputs(None, STATIC).count == 16


def test_random_inputs_of_dynamic_size_models():
    dyn = input_spec(graph(["n", 3, "h", "w"], size="32x16"))
    assert load_inputs(None, dyn, samples=1).data.shape == (1, 3, 32, 16)
    assert load_inputs(None, dyn, samples=1, input_size=(10, 12)).data.shape == (1, 3, 10, 12)
    with pytest.raises(InputError, match="--input-size"):
        load_inputs(None, input_spec(graph(["n", 3, "h", "w"])))
    with pytest.raises(InputError, match="fixed at 8x6"):
        load_inputs(None, STATIC, input_size=(8, 8))


def test_npy_inputs(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = load_inputs(tmp_path / "x.npy", STATIC)
    np.testing.assert_array_equal(got.data, x)
    assert got.source == "npy" and got.count == 5
    assert load_inputs(tmp_path / "x.npy", STATIC, samples=2).count == 2
    np.save(tmp_path / "one.npy", x[0].astype(np.float64))  # one C×H×W sample, float64
    one = load_inputs(tmp_path / "one.npy", STATIC)
    assert one.data.shape == (1, 3, 8, 6) and one.data.dtype == np.float32


@pytest.mark.parametrize("array, fragment", [
    (np.zeros((2, 1, 8, 6), np.float32), "channels 1 instead of 3"),
    (np.zeros((2, 3, 8, 7), np.float32), "width 7 instead of 6"),
    (np.zeros((2, 8, 6, 3), np.float32), "channels last"),
    (np.zeros((1, 2, 3, 8, 6), np.float32), "(5 dimensions)"),
    (np.zeros((2, 3, 8, 6), np.uint8), "uint8"),
    (np.full((2, 3, 8, 6), np.nan, np.float32), "NaN"),
    (np.zeros((0, 3, 8, 6), np.float32), "no samples"),
])
def test_npy_shape_and_type_errors_say_what_to_do(tmp_path, array, fragment):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputError) as info:
        load_inputs(tmp_path / "bad.npy", STATIC)
    assert fragment in info.value.message and "bad.npy" in info.value.message
    assert info.value.fix


def test_a_3d_array_is_one_sample_and_errors_quote_the_shape_in_the_file(tmp_path):
    np.savez(tmp_path / "grey.npz", input=np.zeros((5, 8, 6), np.float32))  # N×H×W without the channel axis
    with pytest.raises(InputError) as info:
        load_inputs(tmp_path / "grey.npz", STATIC)
    message = info.value.message
    assert "(5, 8, 6)" in message and "one C×H×W sample" in message and "channels 5 instead of 3" in message
    assert "(1, 5, 8, 6)" not in message
    np.save(tmp_path / "hwc.npy", np.zeros((8, 6, 3), np.float32))
    with pytest.raises(InputError) as info:
        load_inputs(tmp_path / "hwc.npy", STATIC)
    assert "(8, 6, 3)" in info.value.message and "channels last" in info.value.message
    assert "(2, 0, 1)" in info.value.fix


def test_npz_inputs(tmp_path):
    x = np.ones((4, 3, 8, 6), np.float32)
    np.savez(tmp_path / "a.npz", input=x, labels=np.arange(4))
    assert load_inputs(tmp_path / "a.npz", STATIC).source == "npz"
    np.savez(tmp_path / "b.npz", batch=x * 2)  # the only array, whatever its key
    assert load_inputs(tmp_path / "b.npz", STATIC).data[0, 0, 0, 0] == 2.0
    np.savez(tmp_path / "c.npz", x=x, y=x)
    with pytest.raises(InputError, match="none is named 'input'"):
        load_inputs(tmp_path / "c.npz", STATIC)
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="Cannot read"):
        load_inputs(tmp_path / "d.npz", STATIC)


def test_image_folder_is_resized_and_normalised(tmp_path):
    from PIL import Image

    colour = (255, 0, 102)
    Image.new("RGB", (40, 30), colour).save(tmp_path / "b.png")
    Image.new("L", (10, 10), 51).save(tmp_path / "a.jpg")  # grey images become RGB
    (tmp_path / "notes.txt").write_text("ignored")
    got = load_inputs(tmp_path, STATIC)
    assert got.source == "images" and got.files == ["a.jpg", "b.png"] and got.data.shape == (2, 3, 8, 6)
    expected = (np.array(colour) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(got.data[1, :, 4, 3], expected, rtol=1e-5)
    np.testing.assert_allclose(got.data[0, :, 0, 0], (0.2 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), atol=1e-3)
    custom = load_inputs(tmp_path / "b.png", STATIC, mean=[0.5], std=[0.5])
    np.testing.assert_allclose(custom.data[0, :, 0, 0], (np.array(colour) / 255.0 - 0.5) / 0.5, rtol=1e-5)


def test_one_channel_models_read_grey_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "x.png")
    grey = input_spec(graph(["n", 1, 4, 4]))
    got = load_inputs(tmp_path / "x.png", grey, mean=[0.0], std=[1.0])
    assert got.data.shape == (1, 1, 4, 4) and 0.0 < got.data.mean() < 1.0


def test_image_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="contains no images"):
        load_inputs(empty, STATIC)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        load_inputs(tmp_path / "broken.png", STATIC)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    with pytest.raises(InputError, match="--mean has 2 values"):
        load_inputs(tmp_path / "ok.png", STATIC, mean=[0.1, 0.2])
    with pytest.raises(InputError, match="not positive"):
        load_inputs(tmp_path / "ok.png", STATIC, std=[0.0])


def test_path_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_inputs(tmp_path / "missing.npy", STATIC)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(InputError, match="suffix .csv"):
        load_inputs(tmp_path / "x.csv", STATIC)
    with pytest.raises(InputError, match="--samples 0"):
        load_inputs(None, STATIC, samples=0)


def test_arrays_and_helpers():
    got = load_inputs(np.zeros((3, 3, 8, 6)), STATIC, samples=2)
    assert got.source == "array" and got.count == 2 and got.available == 3
    assert batches(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert parse_size("224") == (224, 224) and parse_size("224x192") == (224, 192)
    with pytest.raises(InputError):
        parse_size("big")
