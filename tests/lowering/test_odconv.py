"""ODConv (authors' ODConv2d layout): recognition must / must-not, static part, inspect."""

from __future__ import annotations

import pytest
import torch
from dynamic_fixtures import DYNAMIC_LAYER_KEYS, dynamic_nets, inspect_network, recognise, relative_error64, scan
from lowered_forms import check_forms, export_lowered, image
from torch import nn

from dcd_deploy.lowering import FAMILIES, LayerInfo, LowerOptions, Mismatch


def reason_of(module: nn.Module) -> str:
    found = recognise(module)
    assert found is not None and found[0] == "odconv", found
    assert isinstance(found[1], Mismatch)
    return " ".join(found[1].reason.split())


@pytest.mark.parametrize("args, kw, attentions", [
    ((16, 32, 3), dict(padding=1), ("channel", "filter", "spatial", "kernel")),
    ((16, 16, 3), dict(stride=2, padding=1, groups=16), ("channel", "spatial", "kernel")),  # depthwise
    ((16, 24, 1), {}, ("channel", "filter", "kernel")),  # pointwise
    ((16, 24, 3), dict(padding=1, kernel_num=1), ("channel", "filter", "spatial")),  # one kernel
    ((16, 24, 1), dict(kernel_num=1), ("channel", "filter")),  # plain-conv forward
])
def test_odconv2d_is_recognised(args, kw, attentions):
    layer = dynamic_nets.ODConv2d(*args, **kw)
    family, info = recognise(layer)
    assert family == "odconv" and isinstance(info, LayerInfo)
    assert (info.kind, info.c_in, info.c_out, info.kernel) == ("ODConv2d", *args)
    assert (info.stride, info.groups, info.experts) == (kw.get("stride", 1), kw.get("groups", 1), kw.get("kernel_num", 4))
    assert info.attentions == attentions and info.temperature == 1.0 and not info.bias


@pytest.mark.parametrize("factory, count", [(dynamic_nets.od_resnet18, 16), (dynamic_nets.od_mobilenetv2, 51)])
def test_every_odconv_of_the_published_networks_is_recognised(factory, count):
    infos, mismatches = scan(factory())
    assert not mismatches and len(infos) == count
    assert {i.family for i in infos.values()} == {"odconv"} and FAMILIES["odconv"].paper == "odconv"


def test_missing_or_wrong_attention_heads_are_refused():
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    del layer.attention.spatial_fc
    assert "has weight [4, 32, 16, 3, 3] and attention but no attention.spatial_fc" in reason_of(layer)
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    del layer.attention.filter_fc
    assert "no attention.filter_fc" in reason_of(layer)
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    layer.attention.kernel_fc = nn.Conv2d(16, 3, 1)
    assert "attention.kernel_fc is Conv2d(16, 3" in reason_of(layer)
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    layer.attention.bn = nn.Identity()
    assert "attention.bn is Identity, expected BatchNorm2d(16)" in reason_of(layer)


def test_wrong_kernel_bank_or_bias_is_refused():
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    layer.kernel_num = 2
    assert "kernel_num=2 but weight is [4, 32, 16, 3, 3]" in reason_of(layer)
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    layer.bias = nn.Parameter(torch.zeros(4, 32))
    assert "has a bias" in reason_of(layer)
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    layer.kernel_size = (3, 5)
    assert "kernel_size (3, 5) is not the same along H and W" in reason_of(layer)


def test_other_families_do_not_claim_odconv():
    layer = dynamic_nets.ODConv2d(16, 32, 3, padding=1)
    assert [f.name for f in FAMILIES.values() if f.looks_dynamic(layer)] == ["odconv"]


def test_static_part_is_the_mean_kernel_in_float64():
    """With every attention head zeroed: α_k = 1/K and α_c = α_f = α_s = 1/2, so y = W̄ ∗ x / 8."""
    torch.manual_seed(0)
    layer = dynamic_nets.ODConv2d(8, 12, 3, stride=2, padding=1).double().eval()
    for head in ("channel_fc", "filter_fc", "spatial_fc", "kernel_fc"):
        nn.init.zeros_(getattr(layer.attention, head).weight)
        nn.init.zeros_(getattr(layer.attention, head).bias)
    _, info = recognise(layer)
    static = FAMILIES["odconv"].static_part(layer, info)
    x = torch.randn(3, 8, 9, 9, dtype=torch.float64)
    assert relative_error64(static(x) / 8, layer(x)) < 1e-12


def test_inspect_lists_every_odconv():
    torch.manual_seed(0)
    model = dynamic_nets.od_mobilenetv2(num_classes=10, width_mult=0.2, last_channel=128)
    result = inspect_network(model, 48)
    data = result.to_dict()
    layers = data["dynamic_layers"]
    assert len(layers) == 51 and data["unmatched_layers"] == [] and data["dcd_layers"] == []
    assert all(set(layer) == DYNAMIC_LAYER_KEYS for layer in layers)
    first, dw = layers[0], layers[2]
    assert (first["path"], first["groups"], first["attentions"]) == \
        ("features.1.conv.0.0", 8, ["channel", "spatial", "kernel"])  # t=1 block: depthwise first
    assert dw["kernel"] == 1 and dw["attentions"] == ["channel", "filter", "kernel"]
    assert "dynamic layers 51 (51 odconv)" in " ".join(result.render().split())


# --- lowering: every form against float64, in PyTorch and on ONNX Runtime (batch 1, 3, 8) ---------------


@pytest.mark.parametrize("c_in, c_out, kernel, stride, groups, kernel_num, forms", [
    (8, 12, 3, 2, 1, 4, ["unfold", "loop"]),  # spatial attention over 3×3 taps: no static experts conv
    (16, 16, 3, 1, 16, 4, ["unfold", "loop"]),  # depthwise: no filter attention
    (8, 12, 1, 1, 1, 4, ["kernel", "experts", "loop"]),
    (8, 12, 1, 1, 1, 1, ["kernel", "experts", "loop"]),  # K = 1: channel and filter attentions only
])
def test_odconv_forms_match_float64(c_in, c_out, kernel, stride, groups, kernel_num, forms):
    layer = dynamic_nets.ODConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                                  kernel_num=kernel_num)
    layer.update_temperature(3.0)
    assert check_forms("odconv", layer, image(c_in)) == forms


def test_experts_form_refuses_a_spatial_attention():
    from dcd_deploy.lowering.dynamic_forms import Attentions, ExpertBank, ExpertsForm

    bank = ExpertBank.build(torch.randn(4, 6, 4, 3, 3), None, None, stride=1, padding=1)
    form = ExpertsForm(bank, (5, 5))
    with pytest.raises(ValueError, match="spatial attention"):
        form(torch.randn(1, 4, 5, 5), Attentions(routing=torch.rand(1, 4), spatial=torch.rand(1, 9)))


def test_attentions_fold_into_one_head_gemm():
    """ODConv's four heads become one Linear (1/τ and the squeeze BatchNorm folded): one Gemm in the graph."""
    family = FAMILIES["odconv"]
    layer = dynamic_nets.ODConv2d(8, 12, 3, padding=1, kernel_num=4).eval()
    lowered = family.lower(layer, family.match(layer), None, LowerOptions("loop", (HW_TEST, HW_TEST)))
    model = export_lowered(lowered, (torch.randn(2, 8, HW_TEST, HW_TEST),))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gemm") == 2 and "BatchNormalization" not in ops and "Div" not in ops
    assert ops.count("Loop") == 1 and "Conv" not in ops  # the only Conv is inside the Loop body


HW_TEST = 6
