"""Adding a layer family is one module: discovered from ``lowering/families``, matched, lowered, swapped."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from dcd_deploy.lowering import FAMILIES, families, find_dynamic_layers, lower_model
from dcd_deploy.lowering.static_twin import static_twin

# A toy dynamic layer: y = x · (1 + tanh(mean(x))) with a learnt Linear, taking (x, gain) like a
# routed layer takes (x, routing weights). Its family lowers it to a module without the tanh.
TOY_FAMILY = '''
import torch
from torch import nn

from dcd_deploy.lowering.family import LayerFamily, LayerInfo, Mismatch, register_family


class LoweredToy(nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x, gain):
        return self.linear(x) * gain.view(-1, 1)


@register_family
class ToyFamily(LayerFamily):
    name = "toy"
    paper = "toy"
    lowered_types = (LoweredToy,)

    def looks_dynamic(self, module):
        return hasattr(module, "toy_gate")

    def match(self, module):
        if not isinstance(getattr(module, "linear", None), nn.Linear):
            return Mismatch(self.name, "has toy_gate but no linear")
        lin = module.linear
        return LayerInfo(family=self.name, kind="ToyLayer", c_in=lin.in_features, c_out=lin.out_features,
                         kernel=1, stride=1, padding=0, attentions=("gain",))

    def forms(self, info, in_shape, static_batch=None):
        return ["plain", "fancy"]

    def costs(self, info, in_shape, target):
        return {"plain": 2.0, "fancy": 1.0}

    def lower(self, module, info, follow_bn, options):
        assert options.form in self.forms(info, None)
        return LoweredToy(module.linear)

    def static_part(self, module, info):
        return module.linear
'''


class ToyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 4)
        self.toy_gate = True

    def forward(self, x, gain):
        return self.linear(x) * gain.view(-1, 1)


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.toy = ToyLayer()

    def forward(self, x):
        return self.toy(x, 1 + torch.tanh(x.mean(1)))


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    (tmp_path / "toy.py").write_text(textwrap.dedent(TOY_FAMILY))
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path)])
    assert "toy" in families.discover()
    yield FAMILIES["toy"]
    del FAMILIES["toy"]
    sys.modules.pop(f"{families.__name__}.toy", None)


def test_a_family_in_one_new_module_is_found_lowered_and_swapped(toy_family):
    torch.manual_seed(0)
    net = ToyNet().eval()
    found = find_dynamic_layers(net)
    assert [(f.path, f.family, f.match.kind) for f in found] == [("toy", "toy", "ToyLayer")]
    x = torch.randn(3, 6)
    lowered, report = lower_model(net, x[:1])  # 'auto': the family's own cost terms choose 'fancy'
    assert report and [(r.family, r.kind, r.form) for r in report.layers] == [("toy", "ToyLayer", "fancy")]
    assert type(lowered.get_submodule("toy")).__name__ == "LoweredToy"
    assert find_dynamic_layers(lowered) == []  # a lowered type is never matched again
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), net(x), rtol=0, atol=0)
    _, fixed = lower_model(net, x[:1], choose_form="plain")
    assert fixed.layers[0].form == "plain"
    assert isinstance(static_twin(net).toy, nn.Linear)


def test_the_gate_runs_the_layer_on_all_its_captured_arguments(toy_family, monkeypatch):
    net = ToyNet().eval()
    module = sys.modules[f"{families.__name__}.toy"]
    monkeypatch.setattr(module.LoweredToy, "forward", lambda self, x, gain: self.linear(x))  # drops the gain
    _, report = lower_model(net, torch.randn(2, 6))
    assert not report and "outputs differ from the toy computation" in report.not_lowered[0].reason


def test_two_families_cannot_share_a_name():
    from dcd_deploy.lowering.family import LayerFamily, register_family

    class Impostor(LayerFamily):
        name = "dcd_conv"

    with pytest.raises(ValueError, match="two layer families are named 'dcd_conv'"):
        register_family(Impostor)
