"""DyConv (Dynamic_conv2d layout): recognition must / must-not, static part, inspect."""

from __future__ import annotations

import pytest
import torch
from dynamic_fixtures import DYNAMIC_LAYER_KEYS, dynamic_nets, inspect_network, recognise, relative_error64, scan
from lowered_forms import check_forms, image
from torch import nn

from dcd_deploy.lowering import FAMILIES, LayerInfo, LowerOptions, Mismatch


def reason_of(module: nn.Module, family: str = "dyconv") -> str:
    found = recognise(module)
    assert found is not None and found[0] == family, found
    assert isinstance(found[1], Mismatch)
    return " ".join(found[1].reason.split())


@pytest.mark.parametrize("kw", [
    dict(in_planes=8, out_planes=16, kernel_size=3, padding=1),
    dict(in_planes=8, out_planes=8, kernel_size=3, stride=2, padding=1, groups=2, bias=False, K=6, temperature=4),
    dict(in_planes=3, out_planes=8, kernel_size=1),
])
def test_dynamic_conv2d_is_recognised(kw):
    layer = dynamic_nets.Dynamic_conv2d(**kw)
    family, info = recognise(layer)
    assert family == "dyconv" and isinstance(info, LayerInfo)
    assert (info.kind, info.c_in, info.c_out, info.kernel) == ("DynamicConv2d", kw["in_planes"], kw["out_planes"],
                                                               kw["kernel_size"])
    assert (info.stride, info.padding, info.groups) == (kw.get("stride", 1), kw.get("padding", 0), kw.get("groups", 1))
    assert info.experts == kw.get("K", 4) and info.attentions == ("kernel",)
    assert info.bias == kw.get("bias", True) and info.temperature == kw.get("temperature", 34)


def test_temperature_is_read_from_the_module():
    model = dynamic_nets.dy_resnet((1, 1, 1, 1), num_classes=10, width=8)
    for _ in range(3):
        model.update_temperature()
    infos, mismatches = scan(model)
    assert not mismatches and {i.temperature for i in infos.values()} == {25.0}


def test_every_dyconv_of_dy_resnet18_is_recognised():
    infos, mismatches = scan(dynamic_nets.dy_resnet18())
    assert not mismatches and len(infos) == 16
    assert {p.rsplit(".", 1)[1] for p in infos} == {"conv1", "conv2"}
    assert FAMILIES["dyconv"].paper == "dyconv"


def test_attention_without_fc2_is_refused():
    layer = dynamic_nets.Dynamic_conv2d(8, 16, 3)
    del layer.attention.fc2
    assert "has weight [4, 16, 8, 3, 3] and attention but no attention.fc2" in reason_of(layer)


def test_weight_without_attention_is_listed_with_a_reason():
    """The generic detector: K kernels mixed by something that is not the published attention."""
    layer = dynamic_nets.Dynamic_conv2d(8, 16, 3)
    layer.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    assert "and attention but no attention.avgpool, attention.fc1, attention.fc2" in reason_of(layer)
    del layer.attention
    assert "has weight [4, 16, 8, 3, 3] but no attention module" in reason_of(layer)


def test_attention_with_batchnorm_or_bad_shapes_is_refused():
    layer = dynamic_nets.Dynamic_conv2d(8, 16, 3)
    layer.attention.bn = nn.BatchNorm2d(3)
    assert "normalisation layer (bn)" in reason_of(layer)
    layer = dynamic_nets.Dynamic_conv2d(8, 16, 3)
    layer.attention.fc2 = nn.Conv2d(3, 5, 1)
    assert "attention.fc2 is Conv2d(3, 5" in reason_of(layer)
    layer = dynamic_nets.Dynamic_conv2d(8, 16, 3)
    layer.K = 5
    assert "K=5 but weight is [4, 16, 8, 3, 3]" in reason_of(layer)
    layer = dynamic_nets.Dynamic_conv2d(8, 16, 3)
    del layer.attention.temperature
    assert "attention.temperature is None, expected a positive number" in reason_of(layer)


def test_static_modules_and_odconv_are_not_claimed():
    assert recognise(nn.Conv3d(4, 4, 3)) is None  # a 5-D weight, but a torch convolution
    assert not FAMILIES["dyconv"].looks_dynamic(dynamic_nets.ODConv2d(8, 8, 3, padding=1))
    block = dynamic_nets.BasicBlock(8, 8, 1, None, lambda i, o, s: nn.Conv2d(i, o, 3, s, 1))
    assert all(recognise(m) is None for m in block.modules())


def test_static_part_equals_uniform_attention_in_float64():
    """With fc2 zeroed the softmax is uniform: the layer is the mean of its experts."""
    torch.manual_seed(0)
    layer = dynamic_nets.Dynamic_conv2d(6, 4, 3, padding=1, stride=2, groups=2, temperature=7).double()
    nn.init.normal_(layer.bias)
    nn.init.zeros_(layer.attention.fc2.weight)
    nn.init.zeros_(layer.attention.fc2.bias)
    _, info = recognise(layer)
    static = FAMILIES["dyconv"].static_part(layer, info)
    x = torch.randn(3, 6, 9, 9, dtype=torch.float64)
    assert relative_error64(static(x), layer(x)) < 1e-12


def test_inspect_lists_every_dyconv():
    torch.manual_seed(0)
    result = inspect_network(dynamic_nets.dy_resnet((1, 1, 1, 1), num_classes=10, width=8), 48)
    layers = result.to_dict()["dynamic_layers"]
    assert len(layers) == 8 and all(set(layer) == DYNAMIC_LAYER_KEYS for layer in layers)
    assert {(layer["family"], layer["kind"], layer["experts"]) for layer in layers} == {("dyconv", "DynamicConv2d", 4)}
    assert layers[2]["path"] == "layer2.0.conv1" and layers[2]["stride"] == 2
    assert "dynamic layers 8 (8 dyconv)" in " ".join(result.render().split())


def test_an_edited_dyconv_is_not_a_dyconv_but_the_generic_family_lowers_it():
    model = dynamic_nets.dy_resnet((1, 1, 1, 1), num_classes=10, width=8)
    model.layer3[0].conv2.attention.fc1 = nn.Conv2d(32, 9, 3, padding=1, bias=False)  # runs, but is no 1×1
    _, mismatch = recognise(model.layer3[0].conv2)
    assert "attention.fc1 is Conv2d(32, 9, kernel (3, 3), groups 1), expected a 1×1 conv" in mismatch.reason
    data = inspect_network(model, 48).to_dict()
    assert data["unmatched_layers"] == []
    families = {layer["path"]: layer["family"] for layer in data["dynamic_layers"]}
    assert len(families) == 8 and families.pop("layer3.0.conv2") == "generic"  # it still ends in the folded idiom
    assert set(families.values()) == {"dyconv"}


# --- lowering: every form against float64, in PyTorch and on ONNX Runtime (batch 1, 3, 8) ---------------


@pytest.mark.parametrize("kernel, groups, temperature, forms", [
    (3, 1, 34.0, ["experts", "unfold", "loop"]),
    (3, 2, 1.0, ["experts", "unfold", "loop"]),
    (1, 1, 7.0, ["kernel", "experts", "loop"]),
])
def test_dyconv_forms_match_float64(kernel, groups, temperature, forms):
    layer = dynamic_nets.Dynamic_conv2d(8, 12, kernel, padding=kernel // 2, groups=groups, K=4, temperature=temperature)
    with torch.no_grad():
        layer.attention.fc2.bias.uniform_(-3, 3)  # a peaked softmax at τ = 1, a flat one at τ = 34
    assert check_forms("dyconv", layer, image(8)) == forms


def test_temperature_is_read_at_lowering_time_and_folded():
    family = FAMILIES["dyconv"]
    layer = dynamic_nets.Dynamic_conv2d(8, 12, 3, padding=1, K=4, temperature=34).eval()
    with torch.no_grad():
        layer.attention.fc2.bias.uniform_(-3, 3)
    x = torch.randn(2, 8, 6, 6)
    hot = family.lower(layer, family.match(layer), None, LowerOptions("loop", (6, 6)))
    layer.attention.temperature = 1.0
    cold = family.lower(layer, family.match(layer), None, LowerOptions("loop", (6, 6)))
    with torch.no_grad():
        assert relative_error64(cold(x), layer(x)) < 1e-5
        assert relative_error64(hot(x), layer(x)) > 1e-3  # the first lowering kept τ = 34 in its weights
    assert not any("temperature" in name for name, _ in cold.named_buffers())
