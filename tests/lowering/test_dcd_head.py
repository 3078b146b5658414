"""The DCD head family (``DYCls``): what it must rewrite (and how), and what it must not (with the reason)."""

from __future__ import annotations

import copy

import pytest
import torch
from lowering_checks import LOWERING_RTOL, assert_lowering_parity
from torch import nn

from dcd_deploy.lowering import FAMILIES, Mismatch, find_dynamic_layers, lower_model, relative_error
from dcd_deploy.lowering.families.dcd_head import LoweredDcdHead
from dcd_deploy.zoo.layers import DYCls


def _head(c_in: int = 64, c_out: int = 10) -> DYCls:
    torch.manual_seed(0)
    head = DYCls(c_in, c_out)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folding is exercised
        for bn in (head.bn1, head.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return head.eval()


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU())
        self.head = _head()

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


# --- must rewrite ------------------------------------------------------------------------------


def test_head_is_lowered_to_one_gemm_form_with_parity():
    torch.manual_seed(0)
    net = Classifier().eval()
    x = torch.randn(3, 3, 16, 16)
    lowered, report = lower_model(net, x[:1])
    assert report and len(report.layers) == 1
    line = report.layers[0]
    assert (line.path, line.family, line.kind, line.form, line.folded_bn) == ("head", "dcd_head", "DYCls", "gemm", None)
    assert isinstance(lowered.get_submodule("head"), LoweredDcdHead)
    assert not any(isinstance(m, (DYCls, nn.BatchNorm1d)) for m in lowered.modules())
    assert_lowering_parity(net, lowered, x)


def test_lowered_head_matches_the_layer_in_float64_and_keeps_hsigmoid_divided_by_three():
    head = _head()
    info = FAMILIES["dcd_head"].match(head)
    lowered = LoweredDcdHead.from_layer(head, info)
    x = torch.randn(4, 64, dtype=torch.float64) * 3
    with torch.no_grad():
        err = relative_error(copy.deepcopy(lowered).double()(x), copy.deepcopy(head).double()(x))
    assert err <= LOWERING_RTOL
    assert torch.allclose(head.hs(torch.tensor([3.0])), torch.tensor([2.0]))  # relu6(6)/3


def test_head_info_is_a_linear_layer_and_its_static_part_is_cls():
    head = _head(32, 5)
    info = FAMILIES["dcd_head"].match(head)
    assert (info.kind, info.c_in, info.c_out, info.kernel, info.stride, info.padding, info.pool) == ("DYCls", 32, 5, 1, 1, 0, None)
    assert not info.spatial and "linear" in info.summary()
    assert FAMILIES["dcd_head"].forms(info, (1, 32)) == ["gemm"]
    assert FAMILIES["dcd_head"].static_part(head, info) is head.cls


# --- must not rewrite ----------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "reason"), [
    (lambda h: delattr(h, "cls_p"), "but no cls_p"),
    (lambda h: setattr(h, "cls", nn.Linear(h.cls.in_features, h.cls.out_features, bias=False)), "cls is not a Linear with bias"),
    (lambda h: setattr(h, "cls_q", nn.Linear(h.cls.in_features, 4, bias=True)), "cls_q is not a bias-free Linear"),
    (lambda h: setattr(h, "bn2", nn.BatchNorm2d(h.cls_q.out_features)), "bn2 is not a BatchNorm1d"),
    (lambda h: setattr(h, "fc_scale", nn.Linear(h.fc_scale.in_features, 3, bias=False)), "fc_scale is not a bias-free Linear"),
], ids=["no-cls_p", "cls-without-bias", "cls_q-with-bias", "bn2-2d", "fc_scale-size"])
def test_head_that_is_not_the_published_one_is_named_and_not_lowered(change, reason):
    net = Classifier().eval()
    change(net.head)
    found = find_dynamic_layers(net)
    assert [(f.path, f.family) for f in found] == [("head", "dcd_head")]
    assert isinstance(found[0].match, Mismatch) and reason in found[0].match.reason


def test_unpublished_head_that_runs_is_reported_and_left_as_it_was():
    net = Classifier().eval()
    net.head.cls_q = nn.Linear(64, net.head.cls_q.out_features, bias=True)  # runs, but is not the published head
    lowered, report = lower_model(net, torch.randn(1, 3, 16, 16))
    assert not report
    assert "not a DCD layer as published: cls_q is not a bias-free Linear" in report.not_lowered[0].reason
    assert type(lowered.get_submodule("head")) is DYCls
