"""Each export stage alone: validate, lower, trace, simplify, convert, stamp, check graph rules,
self-check, write."""

from __future__ import annotations

import os
import stat
import tempfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from dcd_deploy.errors import DcdDeployError, ExportFailed, InputError, LoweringError, OutputError, SelfCheckFailed
from dcd_deploy.exporting import stages
from dcd_deploy.exporting.options import (
    LOWEST_OPSET,
    TORCHSCRIPT_OPSETS,
    ExportOptions,
    runtime_accepts_opset,
    supported_opsets,
    validate,
)
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.exporting.result import SelfCheck
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

SIZE = 32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return calibrate_batchnorm(create_model("mobilenetv2_dcd", num_classes=10, width_mult=0.25, fc_squeeze=8), SIZE)


def opts(tmp_path, **kwargs) -> ExportOptions:
    return ExportOptions(tmp_path / "m.onnx", **{"input_size": SIZE, **kwargs})


class RoutedConv(nn.Module):
    """A dynamic convolution dcd-deploy does not know: per-sample kernels mixed from a bank and applied
    as one grouped convolution with groups = batch (the trick of CondConv's public code)."""

    def __init__(self, cin: int, cout: int, k: int = 3, experts: int = 3):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.route = nn.Linear(cin, experts)
        self.bank = nn.Parameter(torch.randn(experts, cout * cin * k * k) * 0.1)

    def forward(self, x):
        b, c, h, w = x.shape
        r = torch.sigmoid(self.route(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        weight = (r @ self.bank).view(b * self.cout, self.cin, self.k, self.k)
        y = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.k // 2, groups=b)
        return y.view(b, self.cout, y.size(-2), y.size(-1))


def routed_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), RoutedConv(8, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)).eval()


# ------------------------------------------------------------------------------------------------
# validate


def _bad_options(tmp_path, case: str) -> ExportOptions:
    opsets = supported_opsets()
    return {
        "batch 0": lambda: opts(tmp_path, batch=0),
        "unknown target": lambda: opts(tmp_path, target="tpu"),
        "input size": lambda: opts(tmp_path, input_size="big"),
        "opset too old": lambda: opts(tmp_path, opset=opsets.start - 1),
        "opset too new": lambda: opts(tmp_path, opset=opsets[-1] + 1),
        "opset 99": lambda: opts(tmp_path, opset=99),
        "output is a folder": lambda: ExportOptions(tmp_path),
        "missing folder": lambda: ExportOptions(tmp_path / "no" / "such" / "m.onnx"),
        "folder is a file": lambda: ExportOptions(tmp_path / "m.onnx" / "x.onnx"),
        "proc": lambda: ExportOptions("/proc/x.onnx"),
        "report folder missing": lambda: opts(tmp_path, report=tmp_path / "no" / "r.json"),
        "report is the model": lambda: opts(tmp_path, report=tmp_path / "m.onnx"),
    }[case]()


@pytest.mark.parametrize("case", ["batch 0", "unknown target", "input size", "opset too old", "opset too new",
                                  "opset 99", "output is a folder", "missing folder", "folder is a file", "proc",
                                  "report folder missing", "report is the model"])
def test_validate_rejects_bad_options_as_usage_errors_and_writes_nothing(tmp_path, case):
    if case == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    if case == "folder is a file":
        (tmp_path / "m.onnx").write_bytes(b"")
    options = _bad_options(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DcdDeployError) as info:
        validate(options)
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_validate_rejects_a_folder_without_write_permission(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Cannot write"):
            validate(ExportOptions(folder / "m.onnx"))
    finally:
        folder.chmod(0o755)


def test_export_validates_before_any_work(tmp_path):
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the model was run")

    with pytest.raises(InputError, match="--opset 5"):
        export(Exploding(), tmp_path / "m.onnx", input_size=SIZE, opset=5)
    with pytest.raises(OutputError, match="does not exist"):
        export(Exploding(), tmp_path / "missing" / "m.onnx", input_size=SIZE)


def test_opset_range_is_what_torch_declares_and_the_lowered_graphs_need(tiny, tmp_path):
    from torch.onnx import _constants

    # the documented fallback constants are this torch's values
    assert TORCHSCRIPT_OPSETS == (_constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    opsets = supported_opsets()
    assert opsets.start == max(LOWEST_OPSET, _constants.ONNX_MIN_OPSET)
    assert opsets[-1] == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    # both ends really export (with a passing self-check), dynamic size included
    for opset in (opsets.start, opsets[-1]):
        result = export(tiny, tmp_path / f"op{opset}.onnx", input_size=SIZE, opset=opset, dynamic_size=True)
        assert result.self_check and onnx.load(result.path).opset_import[0].version == opset
    # the per-sample Loops (dynamic convolutions of other families) need no more than the range's start
    from dcd_deploy.exporting.loops import MIN_OPSET as LOOP_MIN_OPSET

    assert LOOP_MIN_OPSET <= opsets.start


def test_runtime_is_asked_about_the_opset():
    assert runtime_accepts_opset(supported_opsets()[-1]) is None
    refusal = runtime_accepts_opset(1000)
    assert refusal and "\n" not in refusal


# ------------------------------------------------------------------------------------------------
# lower, trace, check


def test_dynamic_axes():
    assert stages.dynamic_axes(ExportOptions("m.onnx")) == {"input": {0: "batch"}, "logits": {0: "batch"}}
    assert stages.dynamic_axes(ExportOptions("m.onnx", batch=2)) is None
    assert stages.dynamic_axes(ExportOptions("m.onnx", batch=2, dynamic_size=True)) == {
        "input": {2: "height", 3: "width"}, "logits": {}}


def test_lower_trace_check_and_stamp(tiny, tmp_path):
    options = opts(tmp_path)
    lowered, report = stages.lower(tiny, options)
    assert report and len(report.lowered) == 33
    graph = stages.trace(lowered, options)
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["logits"]
    stages.check_graph(graph, options)
    meta = stages.metadata(tiny, options, report)
    assert meta["dcd_deploy.input_size"] == f"{SIZE}x{SIZE}" and "dcd_deploy.arch" not in meta  # a plain module
    graph.metadata_props.add(key="stale", value="x")
    stamped = stages.stamp(graph, meta)
    assert {p.key: p.value for p in stamped.metadata_props} == meta and stamped.producer_name == "dcd-deploy"


def test_check_graph_rejects_a_computed_conv_weight():
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Identity", ["w"], ["w2"]), helper.make_node("Conv", ["x", "w2"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(LoweringError, match="Conv conv takes a computed weight"):
        stages.check_graph(model, ExportOptions("m.onnx"))


def test_exporter_failure_is_one_paragraph_and_the_dump_goes_to_a_log(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    options = ExportOptions(tmp_path / "routed.onnx", input_size=16)
    with pytest.raises(ExportFailed) as info:  # the trace stage alone, on a network torch.onnx refuses
        stages.trace(routed_net(), options)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # neither Python nor C++ printed to the terminal
    logs = list(tmp_path.glob("dcd-deploy-export-routed-*.log"))
    assert len(logs) == 1 and str(logs[0]) in info.value.message
    dump = logs[0].read_text()
    assert "graph(" in dump and "Traceback" in dump and dump.count("\n") > 50
    assert "\n" not in info.value.message and "graph(" not in info.value.message
    assert not (tmp_path / "routed.onnx").exists()


def test_a_successful_trace_leaves_no_log(tiny, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    options = opts(tmp_path)
    stages.trace(stages.lower(tiny, options)[0], options)
    assert list(tmp_path.iterdir()) == []
    assert capfd.readouterr() == ("", "")


def test_simplify_falls_back_with_the_reason(tiny, tmp_path, monkeypatch):
    import onnxsim

    def broken(*args, **kwargs):
        raise RuntimeError("")  # an empty message must not break the summary

    options = opts(tmp_path)
    graph = stages.trace(stages.lower(tiny, options)[0], options)
    monkeypatch.setattr(onnxsim, "simplify", broken)
    same, why = stages.simplify(graph)
    assert same is graph and why == "onnxsim failed (RuntimeError); kept the unsimplified graph"


def test_convert_only_with_fp16(tiny, tmp_path):
    options = opts(tmp_path)
    graph = stages.trace(stages.lower(tiny, options)[0], options)
    assert stages.convert(graph, options) is graph
    half = stages.convert(graph, opts(tmp_path, fp16=True))
    assert "Gemm" not in {n.op_type for n in half.graph.node}
    assert any(init.data_type == TensorProto.FLOAT16 for init in half.graph.initializer)


# ------------------------------------------------------------------------------------------------
# self-check, write


def _graph_bytes(model, options) -> bytes:
    return stages.trace(stages.lower(model, options)[0], options).SerializeToString()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tiny, tmp_path, umask, mode):
    options = opts(tmp_path, report=tmp_path / "r.json")
    previous = os.umask(umask)
    try:
        result = export(tiny, options.path, input_size=SIZE, report=options.report, self_check=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(result.path).st_mode) == mode
    assert stat.S_IMODE(os.stat(options.report).st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]


def test_self_check_then_write(tiny, tmp_path):
    options = opts(tmp_path, batch=2)
    data = _graph_bytes(tiny, options)
    check = stages.self_check(data, tiny, options)
    assert check and list(check.errors) == [2] and check.tolerance == 1e-4
    assert stages.write(data, check, options) == options.path and options.path.read_bytes() == data


def test_write_after_a_failed_self_check_writes_nothing_unless_kept(tmp_path):
    failed = SelfCheck({1: 0.5}, 1e-4)
    with pytest.raises(SelfCheckFailed, match="No file was written"):
        stages.write(b"onnx", failed, opts(tmp_path))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SelfCheckFailed, match="kept at"):
        stages.write(b"onnx", failed, opts(tmp_path, keep_failed=True))
    assert (tmp_path / "m.onnx").read_bytes() == b"onnx"


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stages.write(b"onnx", None, opts(tmp_path))
    assert list(tmp_path.iterdir()) == []
