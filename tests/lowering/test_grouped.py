"""The static-batch ``grouped`` form of a DCD convolution: exact, offered only with a static batch,
exported only into batch-specific files that ONNX Runtime runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from lowering_checks import assert_lowering_parity, build
from torch import nn

from dcd_deploy import export
from dcd_deploy.exporting.graphcheck import BATCH_SPECIFIC_KEY, conv_weights_are_constant
from dcd_deploy.lowering import FAMILIES, lower_model, relative_error
from dcd_deploy.lowering.costmodel import CostChooser, FixedForm
from dcd_deploy.lowering.grouped import GroupedDcdConv
from dcd_deploy.runtime.session import create_session
from dcd_deploy.zoo.layers import DYModule, conv_dy

SIZE = 20


def _layer_net(kind: str) -> nn.Module:
    """A DCD layer followed by its BatchNorm (folded into the form) and a ReLU, calibrated."""
    torch.manual_seed(0)
    layer = {"1x1": lambda: DYModule(16, 40, 4), "3x3": lambda: conv_dy(16, 24, 3, 1, 1),
             "3x3/2": lambda: conv_dy(16, 24, 3, 2, 1)}[kind]()
    net = nn.Sequential(layer, nn.BatchNorm2d(layer.conv.out_channels), nn.ReLU())
    with torch.no_grad():  # non-trivial BatchNorms (bn1, bn2 and the one that follows the layer)
        for bn in (m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    return net.eval()


def _forms(report) -> dict[str, int]:
    forms: dict[str, int] = {}
    for layer in report.lowered:
        forms[layer.form] = forms.get(layer.form, 0) + 1
    return forms


@pytest.mark.parametrize("kind", ["1x1", "3x3", "3x3/2"])
@pytest.mark.parametrize("batch", [1, 3])
def test_grouped_form_is_exact_against_float64(kind, batch):
    model = _layer_net(kind)
    x = torch.randn(batch, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    lowered, report = lower_model(model, x, choose_form="grouped", static_batch=batch)
    assert _forms(report) == {"grouped": 1} and report.lowered[0].folded_bn
    assert any(isinstance(m, GroupedDcdConv) for m in lowered.modules())
    assert_lowering_parity(model, lowered, x, batches=(batch,))


def test_grouped_network_is_exact_at_batch_2():
    model = build("mobilenetv2_dcd", 48, width_mult=0.35, num_classes=10)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    lowered, report = lower_model(model, x, choose_form="grouped", static_batch=2)
    assert _forms(report).get("grouped") == 32  # every DYModule; the head has its own family
    assert_lowering_parity(model, lowered, x, batches=(2,))


def test_grouped_form_is_never_offered_without_a_static_batch():
    model = _layer_net("1x1")
    family = FAMILIES["dcd_conv"]
    info = family.match(model[0])
    shape = (1, 16, SIZE, SIZE)
    assert "grouped" not in family.forms(info, shape) and "grouped" not in family.costs(info, shape, "cpu")
    assert "grouped" in family.forms(info, shape, static_batch=1)
    assert "grouped" in family.costs(info, shape, "cpu", static_batch=1)
    assert FixedForm("grouped")(family, info, shape, model[0]) != "grouped"
    x = torch.randn(1, 16, SIZE, SIZE)
    for form in ("grouped", "auto"):
        _, report = lower_model(model, x, choose_form=form)
        assert "grouped" not in _forms(report)
    with pytest.raises(ValueError, match="static batch"):
        from dcd_deploy.lowering.family import LowerOptions

        family.lower(model[0], info, None, LowerOptions("grouped", (SIZE, SIZE), None))


def test_cost_model_chooses_grouped_on_large_1x1_maps_and_factored_on_large_3x3_layers():
    family = FAMILIES["dcd_conv"]
    chooser = CostChooser("cpu")
    wide = family.match(DYModule(16, 96, 16))  # MobileNetV2's first expansion at 112×112
    assert chooser(family, wide, (1, 16, 112, 112), None, static_batch=1) == "grouped"
    assert chooser(family, wide, (1, 16, 112, 112), None) != "grouped"
    big = family.match(conv_dy(512, 512, 3, 1, 1))  # a computed 3×3 kernel is large and runs unpacked
    assert chooser(family, big, (1, 512, 7, 7), None, static_batch=1) == "factored"


@pytest.fixture(scope="module")
def sample_net() -> nn.Module:
    return build("mobilenetv2_dcd", 48, width_mult=0.35, num_classes=10, fc_squeeze=16)


@pytest.mark.parametrize("batch", [1, 2])
def test_static_batch_export_runs_on_onnx_runtime_and_matches(sample_net, tmp_path, batch):
    path = tmp_path / f"b{batch}.onnx"
    result = export(sample_net, path, input_size=48, batch=batch, form="grouped")
    assert result.self_check and "grouped" in _forms(result.report)
    graph = onnx.load(path)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta[BATCH_SPECIFIC_KEY] == "true" and meta["dcd_deploy.batch"] == str(batch)
    assert meta["dcd_deploy.dynamic_batch"] == "false"
    assert conv_weights_are_constant(graph) == []  # the form's convolutions are allowed here...
    del graph.metadata_props[:]
    assert len(conv_weights_are_constant(graph)) == _forms(result.report)["grouped"]  # ...and nowhere else
    x = torch.randn(batch, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    out = create_session(path.read_bytes(), "cpu").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref64 = sample_net.double()(x.double())
        ref32 = sample_net.float()(x)
    noise = relative_error(ref32, ref64)
    assert relative_error(torch.from_numpy(np.asarray(out)), ref64) <= 1e-5 + 2 * noise + 1e-5


@pytest.mark.parametrize("options", [{"batch": None}, {"batch": 2, "dynamic_size": True}])
def test_dynamic_exports_never_contain_the_grouped_form(sample_net, tmp_path, options):
    path = tmp_path / "dyn.onnx"
    result = export(sample_net, path, input_size=48, form="grouped", self_check=False, **options)
    assert "grouped" not in _forms(result.report)
    graph = onnx.load(path)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta[BATCH_SPECIFIC_KEY] == "false"
    assert conv_weights_are_constant(graph) == []
    assert not any("batch_specific_conv" in n.name for n in graph.graph.node)


def test_tune_times_the_grouped_form_only_in_a_static_batch_export(sample_net, tmp_path):
    from dcd_deploy.exporting.tuning import tuned_form_chooser

    for batch, offered in ((1, True), (None, False)):
        lines: list[str] = []
        chooser = tuned_form_chooser(threads=1, runs=2, on_progress=lines.append)
        result = export(sample_net, tmp_path / "t.onnx", input_size=48, batch=batch, form=chooser, self_check=False)
        assert lines and all(("grouped" in line) == offered for line in lines)
        chosen = {line.rsplit("-> ", 1)[1] for line in lines}
        assert chosen <= set(_forms(result.report))


def test_batch_specific_benchmark_graphs_and_their_floor(tmp_path, capsys):
    from test_benchmarks import _load  # the benchmark scripts' loader

    ratio = _load("static_twin_ratio")
    out = tmp_path / "r.json"
    assert ratio.main(["--models", "mobilenetv2_dcd", "--size", "32", "--batches", "2", "--runs", "2", "--no-plain",
                       "--floor", "--batch-specific", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["rows"][0]["results"]
    assert {"dcd-deploy-b2", "floor-b2", "floor-b2[grouped]"} <= set(res)
    assert res["dcd-deploy-b2"]["rel_err"] < 1e-4
    assert res["floor-b2"]["rel_err"] > 1e-3 and res["floor-b2[grouped]"]["rel_err"] > 1e-3
    assert "mobilenetv2_dcd b2 dcd-deploy-b2:" in capsys.readouterr().out


def test_grouped_floor_drops_only_the_low_rank_branch():
    from test_benchmarks import _load

    ratio = _load("static_twin_ratio")
    model = build("mobilenetv2_dcd", 32, width_mult=0.35, num_classes=10)
    floor = ratio.floor_model(model, 32, batch=2, form="grouped")
    lowered, _ = lower_model(model, torch.randn(2, 3, 32, 32), "grouped", static_batch=2)
    assert sum(isinstance(m, ratio.ScaleOnlyGroupedConv) for m in floor.modules()) == 32
    for module in lowered.modules():
        if isinstance(module, GroupedDcdConv):
            module.p_w.zero_()  # P·M·Q and P·M·b1 vanish: the kernel is diag(s)·W0, the bias constant
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(floor(x), lowered(x), rtol=1e-5, atol=1e-5)


def test_grouped_form_layer_benchmark_times_every_form(capsys):
    from test_benchmarks import _load

    layers = _load("grouped_form_layers")
    assert layers.main(["--models", "resnet18_dcd", "--size", "32", "--runs", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| resnet18_dcd |")]
    assert len(rows) == 7 and all(" - | " in row for row in rows)  # 3×3 layers: no merged form
    assert "of 7 layers" in out
