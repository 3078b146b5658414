"""Lowering, whatever the family: every architecture's parity, the pooling, the gate, the original left alone.

Each family's must-rewrite and must-not-rewrite tests are in ``test_<family>.py``.
"""

from __future__ import annotations

import pytest
import torch
from lowering_checks import LOWERING_RTOL, assert_lowering_parity, build, lowering_errors
from torch import nn

from dcd_deploy.lowering import lower_model
from dcd_deploy.lowering.families.dcd_conv import LoweredDcdConv
from dcd_deploy.lowering.pooling import ExactAdaptiveAvgPool, pooling_matrix
from dcd_deploy.zoo import list_archs
from dcd_deploy.zoo.layers import DYCls, DYModule, conv_basic_dy

# Small inputs keep the suite fast. At 72 the 2×2-pooled layers (MobileNetV2's DYModule, the basic
# block's conv_basic_dy) see odd 9×9, 5×5 and 3×3 maps, i.e. overlapping pooling bins; the
# bottleneck's conv_dy pools to 1×1, so the deep ResNets run at 64.
ARCH_INPUT = {"mobilenetv2_dcd": 72, "resnet18_dcd": 72, "resnet34_dcd": 72, "resnet50_dcd": 64,
              "resnet101_dcd": 64, "resnet152_dcd": 64}
EXPECTED_LAYERS = {"mobilenetv2_dcd": 33, "resnet18_dcd": 17, "resnet34_dcd": 33, "resnet50_dcd": 49,
                   "resnet101_dcd": 100, "resnet152_dcd": 151}


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


@pytest.mark.parametrize("dynamic_size", [False, True])
def test_the_parity_bound_catches_a_small_lowering_error(dynamic_size):
    model = build("mobilenetv2_dcd", 64, width_mult=0.35)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    lowered, _ = lower_model(model, x[:1], dynamic_size=dynamic_size)
    assert_lowering_parity(model, lowered, x)
    layer = next(m for m in lowered.modules() if isinstance(m, LoweredDcdConv))
    with torch.no_grad():
        layer.phi.bias.mul_(1 + 1e-3)  # M = I + … off by 0.1 % in one layer
    err64, *_ = lowering_errors(model, lowered, x, 3)
    assert err64 > 10 * LOWERING_RTOL
    with pytest.raises(AssertionError, match="float64 lowering error"):
        assert_lowering_parity(model, lowered, x)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 9, 14])
@pytest.mark.parametrize("mode", ["static", "dynamic", "channels_last"])
def test_exact_adaptive_pooling_matches_pytorch(size, mode):
    x = torch.randn(2, 5, size, size + 1, dtype=torch.float64)
    for out in (1, 2):
        pool = ExactAdaptiveAvgPool(out, None if mode == "dynamic" else (size, size + 1), mode == "channels_last").double()
        assert pool.channels_last == (mode == "channels_last")
        ref = nn.AdaptiveAvgPool2d(out)(x).flatten(1)
        tol = 1e-7 if mode == "channels_last" else 1e-12  # the pooling matrix holds 1/|bin| rounded to float32
        torch.testing.assert_close(pool(x), ref, rtol=tol, atol=tol * float(x.abs().max()))


def test_pooling_matrix_rows_are_the_adaptive_bins():
    m = pooling_matrix(2, 7, 4)  # 7 rows: overlapping bins 0..3 and 3..6; 4 columns: 0..1 and 2..3
    assert m.shape == (4, 28) and m.dtype == torch.float32
    torch.testing.assert_close(m.sum(1), torch.ones(4))
    first = m[0].view(7, 4)
    assert (first[:4, :2] == 1 / 8).all() and (first[4:] == 0).all() and (first[:, 2:] == 0).all()
    assert (m[3].view(7, 4)[3:, 2:] == 1 / 8).all()  # row 3 is shared by both row bins
    assert ExactAdaptiveAvgPool(2, None, channels_last=True).channels_last is False  # needs a known size


def test_bin_major_pool_is_the_channel_major_pool_permuted():
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    channel_major = ExactAdaptiveAvgPool(2, (7, 6), channels_last=True).double()(x)
    bin_major = ExactAdaptiveAvgPool(2, (7, 6), channels_last=True, bin_major=True).double()(x)
    torch.testing.assert_close(bin_major, channel_major.view(2, 5, 4).transpose(1, 2).reshape(2, 20))
    assert not ExactAdaptiveAvgPool(2, (7, 6), bin_major=True).bin_major  # only channels-last pools are bin-major


# --- structural recognition, whatever the family ------------------------------------------------

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
        from dcd_deploy.zoo.layers import conv_dy

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
    from dcd_deploy.lowering import find_dynamic_layers
    from dcd_deploy.zoo.calibration import calibrate_batchnorm

    torch.manual_seed(0)
    net = UserNet()
    calibrate_batchnorm(net, 32)
    found = {f.path: f.match for f in find_dynamic_layers(net)}
    assert {p: m.kind for p, m in found.items()} == {"dyn": "DYModule", "block": "conv_dy", "head": "DYCls"}
    x = torch.randn(3, 3, 32, 32)
    lowered, report = lower_model(net, x[:1])
    assert report and [layer.folded_bn for layer in report.layers] == ["norm", None, None]
    assert_lowering_parity(net, lowered, x)


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
