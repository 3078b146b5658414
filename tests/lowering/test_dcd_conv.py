"""The DCD convolution family: what it must rewrite (and how), and what it must not (with the reason)."""

from __future__ import annotations

import copy

import onnxruntime as ort
import pytest
import torch
from custom_models import NoBn2
from lowered_forms import export_lowered
from lowering_checks import assert_lowering_parity, build
from torch import nn

from dcd_deploy.exporting.quantize import node_roles
from dcd_deploy.lowering import FAMILIES, DcdLayerInfo, Mismatch, find_dynamic_layers, lower_model
from dcd_deploy.lowering.costmodel import CostChooser
from dcd_deploy.lowering.families.dcd_conv import LoweredDcdConv, form_costs
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm
from dcd_deploy.zoo.layers import DYModule, conv_basic_dy, conv_dy

# --- must rewrite ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["factored", "merged"])
def test_both_forms_compute_the_layer(form):
    model = build("mobilenetv2_dcd", 72, width_mult=0.35)
    x = torch.randn(3, 3, 72, 72)
    lowered, report = lower_model(model, x[:1], choose_form=form)
    assert {layer.form for layer in report.lowered if layer.family == "dcd_conv"} == {form}
    assert sum(isinstance(m, LoweredDcdConv) for m in lowered.modules()) == 32
    assert_lowering_parity(model, lowered, x)


@pytest.mark.parametrize("layer", [conv_dy(16, 24, 3, 2, 1), conv_dy(16, 24, 1, 1, 0), conv_basic_dy(16, 24, 1),
                                   DYModule(16, 24)], ids=["conv_dy_3x3s2", "conv_dy_1x1", "conv_basic_dy", "DYModule"])
@pytest.mark.parametrize("dynamic_size", [False, True])
def test_each_kind_lowers_alone_with_its_batchnorm_folded(layer, dynamic_size):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), layer, nn.BatchNorm2d(24))
    from dcd_deploy.zoo.calibration import calibrate_batchnorm

    calibrate_batchnorm(net, 11)
    x = torch.randn(3, 3, 11, 11)
    lowered, report = lower_model(net, x[:1], dynamic_size=dynamic_size)
    assert report and report.layers[0].folded_bn == "2" and isinstance(lowered.get_submodule("1"), LoweredDcdConv)
    assert sum(1 for n in lowered.graph.nodes if n.op == "call_module") == 2  # stem + lowered layer; the BN is gone
    assert_lowering_parity(net, lowered, x)


@pytest.mark.parametrize("layer", [conv_dy(16, 24, 3, 2, 1), conv_dy(16, 24, 1, 1, 0), conv_basic_dy(16, 24, 1),
                                   DYModule(16, 24)], ids=["conv_dy_3x3s2", "conv_dy_1x1", "conv_basic_dy", "DYModule"])
def test_channels_last_factored_form_computes_the_layer_in_torch_and_onnx(layer):
    """The int8 variant (pooling-matrix pool, latent product on the channels-last map): the same layer,
    checked in float64 in PyTorch and against a float64 reference on ONNX Runtime at batches 1 and 3."""
    torch.manual_seed(0)
    net = calibrate_batchnorm(nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), layer, nn.BatchNorm2d(24)), 11)
    x = torch.randn(3, 3, 11, 11)
    lowered, report = lower_model(net, x[:1], choose_form="factored", channels_last=True)
    new = lowered.get_submodule("1")
    assert isinstance(new, LoweredDcdConv) and new.channels_last and new.pool.channels_last
    assert_lowering_parity(net, lowered, x)
    graph = export_lowered(lowered, (x[:1],))
    roles = node_roles(graph)
    assert list(roles.values()).count("pool") == 1 and list(roles.values()).count("latent") == 1
    ops = [n.op_type for n in graph.graph.node]
    assert "AveragePool" not in ops and ops.count("GlobalAveragePool") == (new.pool.out == 1)  # 2×2: a matrix product
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        with torch.no_grad():
            ref64 = copy.deepcopy(net).double()(x[:batch].double())
            noise = (net(x[:batch]).double() - ref64).abs().max().item() / ref64.abs().max().item()
        out = torch.from_numpy(session.run(None, {"in0": x[:batch].numpy()})[0]).double()
        err = (out - ref64).abs().max().item() / ref64.abs().max().item()
        assert err <= 1e-5 + 4 * noise, f"batch {batch}: ONNX Runtime relative error {err:.2e} (float32 noise {noise:.2e})"


def test_merged_form_is_only_used_for_1x1_stride_1_layers():
    model = build("resnet50_dcd", 64)
    _, report = lower_model(model, torch.randn(1, 3, 64, 64), choose_form="merged")
    for layer in report.lowered:
        if layer.form == "merged":
            assert (layer.info.kernel, layer.info.stride) == (1, 1)
        if layer.info.kernel == 3:
            assert layer.form == "factored"


def test_cost_model_prefers_merged_on_large_maps_and_factored_on_small_ones():
    model = create_model("resnet50_dcd")
    infos = {f.path: f.match for f in find_dynamic_layers(model)}
    early, late = infos["layer1.0.conv3"], infos["layer4.0.conv3"]
    family = FAMILIES["dcd_conv"]
    assert CostChooser("cpu")(family, early, (1, 64, 56, 56), None) == "merged"
    assert CostChooser("cpu")(family, late, (1, 512, 7, 7), None) == "factored"
    assert set(form_costs(infos["layer1.0.conv2"], (1, 64, 56, 56))) == {"factored"}
    assert family.forms(infos["layer1.0.conv2"], (1, 64, 56, 56)) == ["factored"]


def test_layer_info_reports_published_sizes():
    model = create_model("mobilenetv2_dcd", fc_squeeze=16)
    found = {f.path: f.match for f in find_dynamic_layers(model)}
    first = found["features.2.conv.0"]
    assert isinstance(first, DcdLayerInfo)
    assert (first.kind, first.c_in, first.c_out, first.kernel, first.pool) == ("DYModule", 16, 96, 1, 2)
    assert first.latent == DYModule(16, 96).dim
    assert first.summary() == f"DYModule 16→96 1×1/1, L={first.latent}, pool 2×2"


def test_static_part_is_w0():
    layer = conv_dy(32, 32, 3, 1, 1)
    info = FAMILIES["dcd_conv"].match(layer)
    assert FAMILIES["dcd_conv"].static_part(layer, info) is layer.conv


# --- must not rewrite ----------------------------------------------------------------------------




def test_layer_without_bn2_is_reported_with_the_reason_and_not_lowered():
    layer = NoBn2(8, 8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    found = find_dynamic_layers(net)
    assert len(found) == 1 and isinstance(found[0].match, Mismatch)
    assert "fc_phi" in found[0].match.reason and "no bn2" in found[0].match.reason
    lowered, report = lower_model(net.eval(), torch.randn(1, 3, 8, 8))
    assert not report
    assert report.not_lowered[0].path == "1" and "not a DCD layer as published" in report.not_lowered[0].reason
    assert isinstance(lowered.get_submodule("1"), NoBn2)  # left as it was


@pytest.mark.parametrize(("change", "reason"), [
    (lambda m: setattr(m, "q", nn.Conv2d(16, 4, 3, 1, 1, bias=False)), "q is not a bias-free 1×1 Conv2d"),
    (lambda m: setattr(m, "conv", nn.Conv2d(16, 16, 3, 1, 1, bias=False, groups=2)), "conv is not a bias-free, ungrouped"),
    (lambda m: setattr(m, "conv", nn.Conv2d(16, 16, 4, 1, 2, bias=False)), "has no centre tap"),
    (lambda m: setattr(m, "avg_pool", nn.AdaptiveAvgPool2d(3)), "expected AdaptiveAvgPool2d(1) or (2)"),
    (lambda m: setattr(m, "bn1", nn.BatchNorm2d(m.dim, track_running_stats=False)), "bn1 is not a BatchNorm2d"),
    (lambda m: setattr(m, "fc_phi", nn.Linear(m.fc_phi.in_features, m.dim ** 2, bias=True)), "fc_phi is not a bias-free Linear"),
], ids=["3x3-q", "grouped-conv", "even-kernel", "pool-3", "bn1-no-stats", "fc_phi-bias"])
def test_unexpected_shapes_are_named_and_not_lowered(change, reason):
    layer = conv_dy(16, 16, 3, 1, 1)
    change(layer)
    match = FAMILIES["dcd_conv"].match(layer)
    assert isinstance(match, Mismatch) and not match and reason in match.reason
