"""The static twin: every DCD layer replaced by its static part, nothing else touched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcd_deploy.errors import LoweringError
from dcd_deploy.lowering import find_dcd_layers
from dcd_deploy.lowering.static_twin import static_twin
from dcd_deploy.zoo import DYCls, DYModule, create_model


def _small_mobilenet():
    torch.manual_seed(0)
    return create_model("mobilenetv2_dcd", width_mult=0.25, num_classes=10, fc_squeeze=8).eval()


def test_twin_replaces_every_dcd_layer_and_leaves_the_original():
    model = _small_mobilenet()
    layers = find_dcd_layers(model)
    twin = static_twin(model)
    assert find_dcd_layers(twin) == []
    assert len(find_dcd_layers(model)) == len(layers) > 0  # the original is untouched
    modules = dict(twin.named_modules())
    for layer in layers:
        replacement = modules[layer.path]
        if layer.match.family == "dcd_conv":
            assert isinstance(replacement, nn.Conv2d)
            assert torch.equal(replacement.weight, layer.module.conv.weight)
            assert replacement.stride == layer.module.conv.stride and replacement.padding == layer.module.conv.padding
        else:
            assert isinstance(replacement, nn.Linear) and replacement.bias is not None
            assert torch.equal(replacement.weight, layer.module.cls.weight)
    # BatchNorms stay (the exporter folds them), and the twin still maps images to logits
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_bn_layers = sum(isinstance(m, nn.BatchNorm2d) for layer in layers for m in layer.module.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in twin.modules()) == n_bn - n_bn_layers
    assert twin(torch.randn(2, 3, 48, 48)).shape == (2, 10)
    assert sum(p.numel() for p in twin.parameters()) < sum(p.numel() for p in model.parameters())


def test_twin_is_the_static_path_of_each_layer():
    torch.manual_seed(0)
    net = nn.Sequential(DYModule(8, 16), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), DYCls(16, 5)).eval()
    twin = static_twin(net)
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        expected = net[5].cls(net[4](net[3](net[2](net[1](net[0].conv(x))))))
        assert torch.allclose(twin(x), expected)


def test_a_lone_dcd_layer_becomes_its_conv():
    layer = DYModule(8, 16).eval()
    twin = static_twin(layer)
    assert isinstance(twin, nn.Conv2d) and twin is not layer.conv
    assert torch.equal(twin.weight, layer.conv.weight)


class Incomplete(nn.Module):
    """Looks dynamic (has fc_phi and conv_q/conv_p) but lacks bn2."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.conv_q = nn.Conv2d(4, 2, 1, bias=False)
        self.conv_p = nn.Conv2d(2, 4, 1, bias=False)
        self.fc_phi = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        return self.conv(x)


def test_unrecognised_layer_is_named_not_guessed():
    net = nn.Sequential(DYModule(4, 8), Incomplete())
    with pytest.raises(LoweringError, match=r"1 layer\(s\) look dynamic.*1: .*no .*bn2"):
        static_twin(net)
    twin = static_twin(net, strict=False)
    assert isinstance(twin[0], nn.Conv2d) and isinstance(twin[1], Incomplete)


def test_network_without_dcd_layers_has_no_twin():
    with pytest.raises(LoweringError, match="no dynamic layers"):
        static_twin(nn.Sequential(nn.Conv2d(3, 4, 3)))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert isinstance(static_twin(plain, strict=False)[0], nn.Conv2d)
