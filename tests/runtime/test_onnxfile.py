"""The one ONNX file reader: what it reads, and what it says about files that are not ONNX models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dcd_deploy.errors import InputError
from dcd_deploy.runtime.onnxfile import OnnxFile, onnx_input_size, parse_size, read_onnx
from dcd_deploy.runtime.session import parse_provider_options, parse_providers


def save_graph(path, shape, size: str | None = None, precision: str | None = None, inputs: int = 1):
    values = [helper.make_tensor_value_info(f"in{i}", TensorProto.FLOAT, shape) for i in range(inputs)]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["in0"], ["out"])], "g", values, [out]))
    model.producer_name = "dcd-deploy"
    for key, value in (("dcd_deploy.input_size", size), ("dcd_deploy.precision", precision)):
        if value:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_reads_graph_input_metadata_and_precision(tmp_path):
    f = read_onnx(save_graph(tmp_path / "m.onnx", ["n", 3, "h", "w"], size="32x16", precision="float16"))
    assert isinstance(f, OnnxFile) and f.from_dcd_deploy and not f.has_external_data
    assert f.spec.shape == (None, 3, None, None) and f.spec.input_size == (32, 16)
    assert f.metadata["dcd_deploy.input_size"] == "32x16" and f.precision == "float16"
    assert onnx_input_size(f) == (32, 16) and onnx_input_size(f.path) == (32, 16)
    assert onnx_input_size(save_graph(tmp_path / "s.onnx", [1, 3, 8, 6])) == (8, 6)


def test_models_parity_cannot_feed_are_readable_but_have_no_input_size(tmp_path):
    f = read_onnx(save_graph(tmp_path / "two.onnx", ["n", 3, 8, 8], inputs=2))  # reading does not need the input
    with pytest.raises(InputError, match="2 inputs"):
        f.spec  # noqa: B018 - the property raises
    assert onnx_input_size(f) is None


@pytest.mark.parametrize("kind, fragments", [
    ("missing", ["does not exist"]),
    ("folder", ["is a folder"]),
    ("checkpoint", ["PyTorch checkpoint, not an ONNX model", "swap the arguments"]),
    ("legacy_checkpoint", ["PyTorch checkpoint, not an ONNX model"]),
    ("junk", ["not a readable ONNX model", "truncated"]),
    ("empty_graph", ["holds no ONNX graph"]),
])
def test_what_is_not_an_onnx_model_is_named(tmp_path, kind, fragments):
    path = tmp_path / f"{kind}.onnx"
    if kind == "folder":
        path.mkdir()
    elif kind == "checkpoint":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "legacy_checkpoint":
        torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    elif kind == "junk":
        path.write_bytes(b"\xff\xff\xff not protobuf")
    elif kind == "empty_graph":
        onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), path)
    with pytest.raises(InputError) as info:
        read_onnx(path)
    message = " ".join(info.value.message.split())
    assert path.name in message and all(f in message for f in fragments), message


def test_an_npz_is_not_mistaken_for_a_checkpoint(tmp_path):
    path = tmp_path / "inputs.onnx"
    with open(path, "wb") as f:
        np.savez(f, input=np.zeros(3))
    with pytest.raises(InputError) as info:
        read_onnx(path)
    assert "checkpoint" not in info.value.message


def test_parse_size_is_the_one_size_notation():
    assert parse_size("224") == parse_size(224) == parse_size((224, 224)) == (224, 224)
    assert parse_size("224x192") == parse_size("224×192") == parse_size([224, 192]) == (224, 192)
    for bad in ("big", "0", "1x2x3", (224.5, 3), (), "-3", True):
        with pytest.raises(InputError):
            parse_size(bad)


def test_provider_names_and_options_are_checked():
    assert parse_providers("cpu, CPUExecutionProvider,cuda") == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    with pytest.raises(InputError) as info:
        parse_providers("cpu,foo")
    assert info.value.exit_code == 2 and "'foo'" in info.value.message and "cuda" in info.value.message
    with pytest.raises(InputError, match="No execution provider"):
        parse_providers(" , ")
    assert parse_provider_options(["cuda:use_tf32=0", "cpu:a = 1"]) == {
        "CUDAExecutionProvider": {"use_tf32": "0"}, "CPUExecutionProvider": {"a": "1"}}
    with pytest.raises(InputError, match="PROVIDER:KEY=VALUE"):
        parse_provider_options(["cuda-use_tf32"])
