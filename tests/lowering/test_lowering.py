"""Lowering: recognition, the algebra of each family, and parity of the lowered PyTorch model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dcd_deploy.lowering import find_dcd_layers, lower_model, relative_error
from dcd_deploy.lowering.base import LayerInfo, Mismatch
from dcd_deploy.lowering.costmodel import choose_form_by_cost, form_costs
from dcd_deploy.lowering.dcd_conv import LoweredDcdConv
from dcd_deploy.lowering.dcd_head import LoweredDcdHead
from dcd_deploy.lowering.pooling import ExactAdaptiveAvgPool
from dcd_deploy.zoo import create_model, list_archs
from dcd_deploy.zoo.calibration import calibrate_batchnorm
from dcd_deploy.zoo.layers import DYCls, DYModule, conv_basic_dy, conv_dy

# Small inputs keep the suite fast. At 72 the 2×2-pooled layers (MobileNetV2's DYModule, the basic
# block's conv_basic_dy) see odd 9×9, 5×5 and 3×3 maps, i.e. overlapping pooling bins; the
# bottleneck's conv_dy pools to 1×1, so the deep ResNets run at 64.
ARCH_INPUT = {"mobilenetv2_dcd": 72, "resnet18_dcd": 72, "resnet34_dcd": 72, "resnet50_dcd": 64,
              "resnet101_dcd": 64, "resnet152_dcd": 64}
EXPECTED_LAYERS = {"mobilenetv2_dcd": 33, "resnet18_dcd": 17, "resnet34_dcd": 33, "resnet50_dcd": 49,
                   "resnet101_dcd": 100, "resnet152_dcd": 151}


def build(arch: str, size: int, **options) -> nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(create_model(arch, **options), size)


def assert_lowering_parity(model: nn.Module, lowered: nn.Module, x: torch.Tensor, batches: tuple[int, ...] = (1, 3)) -> None:
    """Lowered float32 vs original float32 within 1e-5 plus the model's own float32-vs-float64 noise.

    The original runs once on the whole batch (eval mode: samples are independent); the lowered
    model runs separately at each batch size, so batch-size-dependent bugs show.
    """
    with torch.no_grad():
        ref = model(x)
        ref64 = copy.deepcopy(model).double()(x.double())
        assert torch.isfinite(ref).all()
        for b in batches:
            out = lowered(x[:b])
            noise = relative_error(ref[:b], ref64[:b])
            err = relative_error(out, ref[:b])
            assert err <= 1e-5 + noise, f"batch {b}: lowering error {err:.3e} exceeds 1e-5 + float32 noise {noise:.3e}"


@pytest.mark.parametrize("arch", list_archs())
def test_every_architecture_lowers_with_parity_at_batch_1_and_3(arch):
    size = ARCH_INPUT[arch]
    model = build(arch, size)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    lowered, report = lower_model(model, x[:1])
    assert report, report.summary()
    assert len(report.layers) == EXPECTED_LAYERS[arch]
    # every DCD conv is followed by its block's BatchNorm in both families, and all are folded
    assert sum(1 for layer in report.lowered if layer.folded_bn) == EXPECTED_LAYERS[arch] - 1
    assert not any(isinstance(m, nn.BatchNorm1d) for m in lowered.modules())
    assert_lowering_parity(model, lowered, x)


@pytest.mark.parametrize("form", ["factored", "merged"])
def test_both_forms_compute_the_layer(form):
    model = build("mobilenetv2_dcd", 72, width_mult=0.35)
    x = torch.randn(3, 3, 72, 72)
    lowered, report = lower_model(model, x[:1], choose_form=form)
    assert {layer.form for layer in report.lowered if layer.family == "dcd_conv"} == {form}
    assert_lowering_parity(model, lowered, x)


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
    infos = {f.path: f.match for f in find_dcd_layers(model)}
    early, late = infos["layer1.0.conv3"], infos["layer4.0.conv3"]
    assert choose_form_by_cost(early, (1, 64, 56, 56)) == "merged"
    assert choose_form_by_cost(late, (1, 512, 7, 7)) == "factored"
    assert set(form_costs(infos["layer1.0.conv2"], (1, 64, 56, 56))) == {"factored"}


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 9, 14])
@pytest.mark.parametrize("dynamic", [False, True])
def test_exact_adaptive_pooling_matches_pytorch(size, dynamic):
    x = torch.randn(2, 5, size, size + 1)
    for out in (1, 2):
        pool = ExactAdaptiveAvgPool(out, None if dynamic else (size, size + 1))
        ref = nn.AdaptiveAvgPool2d(out)(x).flatten(1)
        torch.testing.assert_close(pool(x), ref, rtol=1e-6, atol=1e-6)


def test_hsigmoid_divides_by_three_and_lowered_head_keeps_it():
    head = DYCls(64, 10).eval()
    info = next(f.match for f in find_dcd_layers(nn.Sequential(head)))
    lowered = LoweredDcdHead.from_layer(head, info)
    x = torch.randn(4, 64) * 3
    torch.testing.assert_close(lowered(x), head(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(head.hs(torch.tensor([3.0])), torch.tensor([2.0]))  # relu6(6)/3


# --- structural recognition -------------------------------------------------------------------

class CopiedDynamicConv(nn.Module):
    """A user's copy of the reference DYModule under another class name, with its own forward."""

    def __init__(self, inp: int, oup: int):
        super().__init__()
        ref = DYModule(inp, oup, 8)
        for name, child in ref.named_children():
            setattr(self, name, child)
        self.dim, self.mul = ref.dim, ref.mul

    def forward(self, x):
        b, c, h, w = x.shape
        r = self.conv(x)
        y = self.fc(self.avg_pool(x).view(b, c * self.mul))
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        r = self.hs(self.fc_scale(y)).view(b, -1, 1, 1) * r
        z = self.bn1(self.conv_q(x)).view(b, self.dim, -1)
        z = self.bn2(torch.matmul(phi, z)) + z
        return self.conv_p(z.view(b, -1, h, w)) + r


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.dyn = CopiedDynamicConv(16, 32)
        self.norm = nn.BatchNorm2d(32)
        self.block = conv_dy(32, 32, 3, 2, 1)
        self.head = DYCls(32, 5)

    def forward(self, x):
        x = torch.relu(self.norm(self.dyn(self.stem(x))))
        x = self.block(x)
        return self.head(x.mean((2, 3)))


def test_copied_layers_under_other_names_are_recognised_and_lowered():
    torch.manual_seed(0)
    net = UserNet()
    calibrate_batchnorm(net, 32)
    found = {f.path: f.match for f in find_dcd_layers(net)}
    assert {p: m.kind for p, m in found.items()} == {"dyn": "DYModule", "block": "conv_dy", "head": "DYCls"}
    x = torch.randn(3, 3, 32, 32)
    lowered, report = lower_model(net, x[:1])
    assert report and [layer.folded_bn for layer in report.layers] == ["norm", None, None]
    assert_lowering_parity(net, lowered, x)


class NoBn2(conv_basic_dy):
    """A user's variant: the dynamic fusion without its BatchNorm1d (not the published layer)."""

    def __init__(self, inplanes: int, planes: int):
        super().__init__(inplanes, planes, 1)
        del self.bn2

    def forward(self, x):
        b = x.size(0)
        y = self.fc(self.avg_pool(x).view(b, -1))
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        r = self.hs(self.fc_scale(y)).view(b, -1, 1, 1) * self.conv(x)
        z = self.bn1(self.q(x))
        h, w = z.shape[2:]
        z = torch.matmul(phi, z.view(b, self.dim, -1)) + z.view(b, self.dim, -1)
        return self.p(z.view(b, -1, h, w)) + r


def test_layer_without_bn2_is_reported_with_the_reason_and_not_lowered():
    layer = NoBn2(8, 8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    found = find_dcd_layers(net)
    assert len(found) == 1 and isinstance(found[0].match, Mismatch)
    assert "fc_phi" in found[0].match.reason and "no bn2" in found[0].match.reason
    lowered, report = lower_model(net.eval(), torch.randn(1, 3, 8, 8))
    assert not report
    assert report.not_lowered[0].path == "1" and "bn2" in report.not_lowered[0].reason
    assert isinstance(lowered.get_submodule("1"), NoBn2)  # left as it was


def test_unexpected_shapes_are_named():
    layer = conv_dy(16, 16, 3, 1, 1)
    layer.q = nn.Conv2d(16, 4, 3, 1, 1, bias=False)  # a 3×3 q cannot be the centre tap
    match = find_dcd_layers(nn.Sequential(layer))[0].match
    assert isinstance(match, Mismatch) and "q is not a bias-free 1×1 Conv2d" in match.reason


def test_layer_whose_forward_differs_fails_the_numerical_gate():
    class SigmoidGate(DYModule):
        def forward(self, x):  # looks like DYModule, computes something else
            return super().forward(x) * torch.sigmoid(x.mean())

    net = nn.Sequential(SigmoidGate(8, 16)).eval()
    _, report = lower_model(net, torch.randn(1, 8, 6, 6))
    assert not report and "outputs differ" in report.not_lowered[0].reason


def test_lowered_modules_contain_only_static_parts():
    model = build("resnet18_dcd", 64)
    lowered, _ = lower_model(model, torch.randn(1, 3, 64, 64))
    for m in lowered.modules():
        assert not isinstance(m, (conv_basic_dy, DYCls, nn.BatchNorm1d))
    assert sum(isinstance(m, LoweredDcdConv) for m in lowered.modules()) == 16


def test_the_original_model_is_not_modified():
    model = build("mobilenetv2_dcd", 64, width_mult=0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lower_model(model, torch.randn(1, 3, 64, 64))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.features[2].conv[0], DYModule)


def test_layer_info_reports_published_sizes():
    model = create_model("mobilenetv2_dcd", fc_squeeze=16)
    found = {f.path: f.match for f in find_dcd_layers(model)}
    first = found["features.2.conv.0"]
    assert isinstance(first, LayerInfo)
    assert (first.kind, first.c_in, first.c_out, first.kernel, first.pool) == ("DYModule", 16, 96, 1, 2)
    assert first.latent == DYModule(16, 96).dim
    assert found["classifier.1"].kind == "DYCls" and found["classifier.1"].latent == 32
