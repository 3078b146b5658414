"""The Triton model repository parses with Triton's own ModelConfig and says what the file says."""

from __future__ import annotations

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dcd_deploy.serve.repository import CONTROL_FLOW, TRITON_TYPES, control_flow_ops


def _parse(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def _declared(path, inputs: bool):
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] if inputs else model.graph.output
    return [(v.name, TRITON_TYPES[v.type.tensor_type.elem_type],
             [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]) for v in values]


def _check_tensors(config, path, batching: bool):
    for field, inputs in ((config.input, True), (config.output, False)):
        declared = _declared(path, inputs)
        assert len(field) == len(declared)
        for tensor, (name, dtype, dims) in zip(field, declared):
            assert tensor.name == name
            assert mc.DataType.Name(tensor.data_type) == dtype
            assert list(tensor.dims) == (dims[1:] if batching else dims)


def test_dynamic_batch_file(served_onnx, tmp_path, run_cli):
    result = run_cli("repo", served_onnx, tmp_path / "repo", "--name", "digits", "--max-batch", "12", "--instances", "2")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "repo" / "digits"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["digits"]
    assert (folder / "1" / "model.onnx").read_bytes() == served_onnx.read_bytes()
    config = _parse(folder)
    assert config.name == "digits" and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 12
    _check_tensors(config, served_onnx, batching=True)
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds > 0
    [group] = config.instance_group
    assert group.count == 2 and group.kind == mc.ModelInstanceGroup.KIND_CPU
    [warm] = config.model_warmup
    assert warm.batch_size == 1
    assert list(warm.inputs["input"].dims) == [3, 48, 48] and warm.inputs["input"].random_data
    assert not config.optimization.HasField("cuda")  # no CUDA graphs: Triton applies them to TensorRT only
    assert not control_flow_ops(onnx.load(str(served_onnx))) and CONTROL_FLOW == ("Loop", "If", "Scan")


def test_fixed_batch_file_is_not_batched(fixed_batch_onnx, tmp_path, run_cli, expect_user_error):
    expect_user_error(run_cli("repo", fixed_batch_onnx, tmp_path / "r", "--max-batch", "4"), "fixed batch axis", "batch 2")
    assert not (tmp_path / "r").exists()  # nothing half-written
    result = run_cli("repo", fixed_batch_onnx, tmp_path / "r", "--device", "gpu")
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "r" / "digits_b2")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    _check_tensors(config, fixed_batch_onnx, batching=False)
    assert list(config.input[0].dims) == [2, 3, 48, 48]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_refusals_write_nothing(served_onnx, tmp_path, run_cli, expect_user_error):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    expect_user_error(run_cli("repo", broken, tmp_path / "a"), "not a readable ONNX model")
    expect_user_error(run_cli("repo", served_onnx, tmp_path / "a", "--name", "bad/name"), "not a Triton model name")
    assert not (tmp_path / "a").exists()
    assert run_cli("repo", served_onnx, tmp_path / "a").exit_code == 0
    expect_user_error(run_cli("repo", served_onnx, tmp_path / "a"), "already exists")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["digits"]  # no staging folder left


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_text_is_protobuf_text_format(served_onnx, tmp_path, device):
    from dcd_deploy.serve.repository import build_config, config_text

    config = build_config(served_onnx, device=device)
    assert text_format.Parse(config_text(config), mc.ModelConfig()) == config
