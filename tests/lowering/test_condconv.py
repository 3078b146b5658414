"""CondConv (timm's CondConv2d layout): recognition must / must-not, static part, inspect."""

from __future__ import annotations

import pytest
import torch
from dynamic_fixtures import DYNAMIC_LAYER_KEYS, dynamic_nets, inspect_network, recognise, relative_error64, scan
from lowered_forms import check_forms, image, random_bn
from torch import nn

from dcd_deploy.lowering import FAMILIES, LayerInfo, LowerOptions, Mismatch


def reason_of(module: nn.Module) -> str:
    found = recognise(module)
    assert found is not None and found[0] == "condconv", found
    assert isinstance(found[1], Mismatch)
    return " ".join(found[1].reason.split())


@pytest.mark.parametrize("kw, kernel, groups", [
    (dict(in_channels=8, out_channels=16, kernel_size=1), 1, 1),
    (dict(in_channels=12, out_channels=12, kernel_size=5, stride=2, groups=12, bias=True), 5, 12),
    (dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, num_experts=8), 3, 2),
])
def test_condconv2d_is_recognised(kw, kernel, groups):
    layer = dynamic_nets.CondConv2d(**kw)
    family, info = recognise(layer)
    assert family == "condconv" and isinstance(info, LayerInfo)
    assert (info.kind, info.c_in, info.c_out) == ("CondConv2d", kw["in_channels"], kw["out_channels"])
    assert (info.kernel, info.stride, info.padding, info.groups) == (kernel, kw.get("stride", 1), kernel // 2, groups)
    assert info.experts == kw.get("num_experts", 4) and info.attentions == ("routing",)
    assert info.bias == kw.get("bias", False)
    assert FAMILIES["condconv"].paper == "condconv"


def test_every_condconv_of_efficientnet_cc_b0_is_recognised():
    infos, mismatches = scan(dynamic_nets.efficientnet_cc())
    assert not mismatches
    assert len(infos) == 24 and {i.family for i in infos.values()} == {"condconv"}
    assert {p.rsplit(".", 1)[1] for p in infos} == {"conv_pw", "conv_dw", "conv_pwl"}
    dw = infos["blocks.4.0.conv_dw"]
    assert dw.groups == dw.c_in == dw.c_out and dw.kernel == 5


def test_tf_same_padding_is_refused():
    layer = dynamic_nets.CondConv2d(8, 8, 3)
    layer.dynamic_padding = True
    assert "dynamic_padding=True" in reason_of(layer)


def test_full_kernel_experts_with_num_experts_are_refused():
    """A CondConv copy that keeps [K, C_out, C_in, k, k] and routes inside the layer."""
    layer = dynamic_nets.CondConv2d(8, 16, 3)
    layer.weight = nn.Parameter(torch.zeros(4, 16, 8, 3, 3))
    assert "has num_experts=4 but weight is [4, 16, 8, 3, 3], not timm's" in reason_of(layer)


def test_wrong_expert_size_and_bias_are_refused():
    layer = dynamic_nets.CondConv2d(8, 16, 3)
    layer.weight = nn.Parameter(torch.zeros(4, 16 * 8 * 9 + 1))
    assert "values per expert are expected" in reason_of(layer)
    layer = dynamic_nets.CondConv2d(8, 16, 3, bias=True)
    layer.bias = nn.Parameter(torch.zeros(16))
    assert "bias is [16], expected [4, 16]" in reason_of(layer)


def test_condconv_without_routing_argument_is_refused():
    class SelfRouted(dynamic_nets.CondConv2d):
        def forward(self, x):
            return super().forward(x, torch.ones(x.shape[0], self.num_experts))

    assert "forward takes only the input" in reason_of(SelfRouted(8, 8, 3))


def test_static_modules_are_not_claimed():
    block = dynamic_nets.InvertedResidual(8, 8, 3, 1, 6, 2)  # the same block without experts
    assert all(recognise(m) is None for m in block.modules())
    assert recognise(nn.Conv3d(4, 4, 3)) is None
    no_weight = nn.Module()
    no_weight.num_experts = 4
    assert recognise(no_weight) is None


def test_static_part_equals_uniform_routing_in_float64():
    torch.manual_seed(0)
    layer = dynamic_nets.CondConv2d(6, 6, 3, groups=3, bias=True).double()
    nn.init.normal_(layer.bias)
    _, info = recognise(layer)
    static = FAMILIES["condconv"].static_part(layer, info).double()
    x = torch.randn(3, 6, 9, 9, dtype=torch.float64)
    uniform = torch.full((3, 4), 0.25, dtype=torch.float64)
    assert relative_error64(static(x, uniform), layer(x, uniform)) < 1e-12


def test_inspect_lists_every_condconv():
    torch.manual_seed(0)
    model = dynamic_nets.efficientnet_cc(num_classes=10, width_mult=0.25, depth_mult=0.25, num_features=256)
    result = inspect_network(model, 48)
    data = result.to_dict()
    assert data["dcd_layers"] == [] and data["unmatched_layers"] == []
    layers = data["dynamic_layers"]
    assert len(layers) == 9 and {layer["family"] for layer in layers} == {"condconv"}
    assert all(set(layer) == DYNAMIC_LAYER_KEYS for layer in layers)
    first = layers[0]
    assert (first["path"], first["kind"], first["experts"], first["attentions"]) == \
        ("blocks.4.0.conv_pw", "CondConv2d", 4, ["routing"])
    assert all(layer["macs"] > 0 for layer in layers)
    text = " ".join(result.render().split())
    assert "dynamic layers 9 (9 condconv)" in text and "blocks.6.0.conv_pwl condconv CondConv2d" in text


# --- lowering: every form against float64, in PyTorch and on ONNX Runtime (batch 1, 3, 8) ---------------


def _with_routing(c_in: int, experts: int = 4):
    def make(n: int):
        gen = torch.Generator().manual_seed(n)
        return image(c_in)(n)[0], torch.sigmoid(torch.randn(n, experts, generator=gen) * 2)
    return make


@pytest.mark.parametrize("kw, forms", [
    (dict(in_channels=12, out_channels=20, kernel_size=1, bias=True), ["kernel", "experts", "loop"]),
    (dict(in_channels=16, out_channels=16, kernel_size=5, stride=2, groups=16), ["experts", "unfold", "loop"]),
    (dict(in_channels=8, out_channels=12, kernel_size=3, bias=True), ["experts", "unfold", "loop"]),
])
def test_condconv_forms_match_float64(kw, forms):
    layer = dynamic_nets.CondConv2d(**kw, num_experts=4)
    assert check_forms("condconv", layer, _with_routing(kw["in_channels"])) == forms


@pytest.mark.parametrize("form", ["kernel", "experts", "unfold", "loop"])
def test_sigmoid_routing_adds_the_bn_shift_once(form):
    """Σ r_k ≠ 1 for CondConv: with all routing weights 0 the output is exactly the BatchNorm of 0."""
    family = FAMILIES["condconv"]
    layer = dynamic_nets.CondConv2d(6, 10, 1, bias=True, num_experts=4).eval()
    bn = random_bn(10)
    lowered = family.lower(layer, family.match(layer), bn, LowerOptions(form, (5, 5)))
    x, r = torch.randn(2, 6, 5, 5), torch.zeros(2, 4)
    with torch.no_grad():
        expected = bn(torch.zeros(2, 10, 5, 5))
        assert torch.allclose(lowered(x, r), expected, atol=1e-6)
        r = torch.full((2, 4), 0.9)  # Σ r = 3.6: expert biases scaled, the shift still once
        assert relative_error64(lowered(x, r), bn(layer(x, r))) < 1e-5


def test_cost_model_keeps_one_times_the_arithmetic_for_full_convolutions():
    family = FAMILIES["condconv"]
    pw = family.match(dynamic_nets.CondConv2d(112, 672, 1, num_experts=4))
    full = family.match(dynamic_nets.CondConv2d(256, 256, 3, num_experts=4))
    pw_costs = family.costs(pw, (1, 112, 14, 14), "cpu")
    full_costs = family.costs(full, (1, 256, 14, 14), "cpu")
    assert min(pw_costs, key=pw_costs.get) in ("kernel", "loop")  # 1× the arithmetic, never K×
    assert min(full_costs, key=full_costs.get) in ("unfold", "loop")
    assert set(family.costs(pw, (1, 112, 14, 14), "cuda")) == {"kernel", "experts"}  # no Loop on cuda
    assert set(family.costs(full, (1, 256, 14, 14), "cuda")) == {"experts", "unfold"}
