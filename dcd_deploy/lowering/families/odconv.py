"""ODConv (omni-dimensional dynamic convolution).

Four attentions from one squeeze ``s = relu(bn(fc(avgpool(x))))``, each divided by the
temperature τ before its nonlinearity::

    α_c = sigmoid(channel_fc(s) / τ)     C_in values: scales the input channels
    α_f = sigmoid(filter_fc(s) / τ)      C_out values (absent for depthwise layers)
    α_s = sigmoid(spatial_fc(s) / τ)     one k×k map (absent for 1×1 layers)
    α_k = softmax(kernel_fc(s) / τ)      K values (absent when K = 1)
    y   = α_f ⊙ ((Σ_k α_k (α_s ⊙ W_k)) ∗ (α_c ⊙ x))

Recognised structure (attribute names and shapes, never class names), as in the authors' code:
``weight`` ``[K, C_out, C_in/g, k, k]`` and no bias; ``in_planes``, ``out_planes``,
``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``, ``kernel_num`` (= K when
present); ``attention`` with ``avgpool``, ``fc`` (1×1, C_in → A), ``bn`` (BatchNorm2d(A)), ``relu``,
``channel_fc`` (A → C_in), ``filter_fc`` (A → C_out; required unless depthwise), ``spatial_fc``
(A → k²; required unless k = 1), ``kernel_fc`` (A → K; required unless K = 1) and a positive
``temperature``. ``attentions`` lists the heads present, in the order channel, filter, spatial,
kernel. The static part is one convolution holding the experts' mean.
"""

from __future__ import annotations

from torch import nn

from ..dynamic_forms import ExpertBank, PooledAttention
from ..family import Mismatch, register_family
from ._expert_conv import (
    ExpertConvInfo,
    describe_layer,
    expert_count_hint,
    expert_weight,
    is_conv1x1,
    is_global_avgpool,
    match_expert_bank,
    odconv_like,
    own_bias,
    read_temperature,
    shape_text,
    static_expert_conv,
)
from ._expert_lowering import ExpertMixingFamily

KIND = "ODConv2d"


def _heads(c_in: int, c_out: int, kernel: int, experts: int, depthwise: bool) -> dict[str, tuple[int, bool]]:
    """attention name -> (output size, required)."""
    return {"channel": (c_in, True), "filter": (c_out, not depthwise), "spatial": (kernel * kernel, kernel > 1),
            "kernel": (experts, experts > 1)}


@register_family
class ODConvFamily(ExpertMixingFamily):
    """ODConv2d: K kernels with channel, filter, spatial and kernel attentions from one squeeze."""

    name = "odconv"
    paper = "odconv"
    title = "ODConv"

    def looks_dynamic(self, module: nn.Module) -> bool:
        w = expert_weight(module)
        return expert_count_hint(module) is not None and w.ndim == 5 and odconv_like(module)

    def match(self, module: nn.Module) -> ExpertConvInfo | Mismatch:
        f = self.name
        bank = match_expert_bank(module, "kernel_num", f)
        if isinstance(bank, Mismatch):
            return bank
        weight, experts, geometry, c_in, c_out = bank.weight, bank.experts, bank.geometry, bank.c_in, bank.c_out
        if own_bias(module) is not None:
            return Mismatch(f, "has a bias; published ODConv layers have none")
        depthwise = geometry.groups == c_in == c_out
        heads = self._match_attention(module, _heads(c_in, c_out, geometry.kernel, experts, depthwise), c_in, weight)
        if isinstance(heads, Mismatch):
            return heads
        temperature = read_temperature(module.attention, "attention", f)
        if isinstance(temperature, Mismatch):
            return temperature
        names = {"pool": "attention.avgpool", "fc": "attention.fc", "bn": "attention.bn"}
        names.update({h: f"attention.{h}_fc" for h in heads})
        return ExpertConvInfo(
            family=f, kind=KIND, c_in=c_in, c_out=c_out, kernel=geometry.kernel, stride=geometry.stride,
            padding=geometry.padding, dilation=geometry.dilation, groups=geometry.groups, experts=experts,
            attentions=tuple(heads), bias=False, temperature=temperature, names=names,
        )

    def _match_attention(self, module: nn.Module, heads: dict[str, tuple[int, bool]], c_in: int,
                         weight) -> tuple[str, ...] | Mismatch:
        f, lead = self.name, f"has weight {shape_text(weight)}"
        att = getattr(module, "attention", None)
        if not isinstance(att, nn.Module):
            return Mismatch(f, f"{lead} but no attention module")
        missing = [n for n in ("avgpool", "fc", "bn") if not isinstance(getattr(att, n, None), nn.Module)]
        if missing:
            return Mismatch(f, f"{lead} and attention but no " + ", ".join(f"attention.{n}" for n in missing))
        if not is_global_avgpool(att.avgpool):
            return Mismatch(f, f"attention.avgpool is {describe_layer(att.avgpool)}, not a global average pool")
        if not is_conv1x1(att.fc, c_in, None) or (isinstance(att.fc, nn.Conv2d) and att.fc.bias is not None):
            return Mismatch(f, f"attention.fc is {describe_layer(att.fc)}, expected a bias-free 1×1 conv from {c_in} channels")
        squeeze = att.fc.out_channels if isinstance(att.fc, nn.Conv2d) else att.fc.out_features
        if not isinstance(att.bn, nn.BatchNorm2d) or att.bn.num_features != squeeze:
            return Mismatch(f, f"attention.bn is {describe_layer(att.bn)}, expected BatchNorm2d({squeeze})")
        present = []
        for head, (size, required) in heads.items():
            fc = getattr(att, f"{head}_fc", None)
            if fc is None:
                if required:
                    return Mismatch(f, f"{lead} and attention but no attention.{head}_fc")
                continue
            if not is_conv1x1(fc, squeeze, size):
                return Mismatch(f, f"attention.{head}_fc is {describe_layer(fc)}, expected a 1×1 conv {squeeze} → {size}")
            present.append(head)
        return tuple(present)

    def static_part(self, module: nn.Module, info: ExpertConvInfo) -> nn.Module:
        return static_expert_conv(module.weight, None, info)

    def lowering_parts(self, module: nn.Module, info: ExpertConvInfo, follow_bn: nn.Module | None,
                       in_hw: tuple[int, int] | None) -> tuple[nn.Module, ExpertBank]:
        """The squeeze's BatchNorm goes into fc, 1/τ into the four heads (one Linear)."""
        heads = [(name, module.get_submodule(info.names[name])) for name in info.attentions]
        attention = PooledAttention(module.get_submodule(info.names["fc"]), module.get_submodule(info.names["bn"]),
                                    heads, info.temperature)
        bank = ExpertBank.build(module.weight, None, follow_bn, stride=info.stride, padding=info.padding,
                                dilation=info.dilation, groups=info.groups, routed="kernel" in info.attentions,
                                sums_to_one="filter" not in info.attentions)
        return attention, bank
