"""DyConv (dynamic convolution: attention over K convolution kernels).

The layer, per sample n, with temperature τ (annealed during training, read from the module)::

    π_n = softmax(fc2(relu(fc1(avgpool(x_n)))) / τ)                (K values, sum to 1)
    y_n = (Σ_k π_nk W_k) ∗ x_n + Σ_k π_nk b_k

Recognised structure (attribute names and shapes, never class names), as in the widely copied
PyTorch implementation: ``weight`` ``[K, C_out, C_in/g, k, k]``, ``bias`` ``[K, C_out]`` or None,
``in_planes``, ``out_planes``, ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``,
``K`` (when present, equal to the weight's first dimension); ``attention`` with ``avgpool``
(global average pool), ``fc1`` (1×1 convolution or Linear, C_in → hidden), ``fc2`` (hidden → K)
and a positive ``temperature`` attribute; no BatchNorm inside the attention. The single
attention is ``"kernel"``. The static part is one convolution holding the experts' mean.
"""

from __future__ import annotations

from torch import nn

from ..dynamic_forms import ExpertBank, PooledAttention
from ..family import Mismatch, register_family
from ._expert_conv import (
    ExpertConvInfo,
    check_bias,
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

KIND = "DynamicConv2d"


@register_family
class DyConvFamily(ExpertMixingFamily):
    """Dynamic_conv2d-style DyConv: K full kernels mixed by a softmax attention with temperature."""

    name = "dyconv"
    paper = "dyconv"
    title = "DyConv"

    def looks_dynamic(self, module: nn.Module) -> bool:
        k = expert_count_hint(module)
        return k is not None and expert_weight(module).ndim == 5 and not odconv_like(module) \
            and not isinstance(getattr(module, "num_experts", None), int)

    def match(self, module: nn.Module) -> ExpertConvInfo | Mismatch:
        f = self.name
        bank = match_expert_bank(module, "K", f)
        if isinstance(bank, Mismatch):
            return bank
        weight, experts, geometry, c_in, c_out = bank.weight, bank.experts, bank.geometry, bank.c_in, bank.c_out
        bias = own_bias(module)
        for bad in (check_bias(bias, experts, c_out, f), self._match_attention(module, c_in, experts, weight)):
            if bad is not None:
                return bad
        temperature = read_temperature(module.attention, "attention", f)
        if isinstance(temperature, Mismatch):
            return temperature
        return ExpertConvInfo(
            family=f, kind=KIND, c_in=c_in, c_out=c_out, kernel=geometry.kernel, stride=geometry.stride,
            padding=geometry.padding, dilation=geometry.dilation, groups=geometry.groups, experts=experts,
            attentions=("kernel",), bias=bias is not None, temperature=temperature,
            names={"pool": "attention.avgpool", "fc1": "attention.fc1", "fc2": "attention.fc2"},
        )

    def _match_attention(self, module: nn.Module, c_in: int, experts: int, weight) -> Mismatch | None:
        f, lead = self.name, f"has weight {shape_text(weight)}"
        att = getattr(module, "attention", None)
        if not isinstance(att, nn.Module):
            return Mismatch(f, f"{lead} but no attention module (the kernel attention is computed elsewhere)")
        missing = [n for n in ("avgpool", "fc1", "fc2") if not isinstance(getattr(att, n, None), nn.Module)]
        if missing:
            return Mismatch(f, f"{lead} and attention but no " + ", ".join(f"attention.{n}" for n in missing))
        if not is_global_avgpool(att.avgpool):
            return Mismatch(f, f"attention.avgpool is {describe_layer(att.avgpool)}, not a global average pool")
        if not is_conv1x1(att.fc1, c_in, None):
            return Mismatch(f, f"attention.fc1 is {describe_layer(att.fc1)}, expected a 1×1 conv or Linear "
                               f"from {c_in} channels")
        hidden = att.fc1.out_channels if isinstance(att.fc1, nn.Conv2d) else att.fc1.out_features
        if not is_conv1x1(att.fc2, hidden, experts):
            return Mismatch(f, f"attention.fc2 is {describe_layer(att.fc2)}, expected a 1×1 conv or Linear "
                               f"{hidden} → {experts}")
        norms = [n for n, m in att.named_children() if isinstance(m, nn.modules.batchnorm._NormBase)]
        if norms:
            return Mismatch(f, f"attention has a normalisation layer ({', '.join(norms)}) between fc1 and fc2, "
                               "which the published DyConv attention does not have")
        return None

    def static_part(self, module: nn.Module, info: ExpertConvInfo) -> nn.Module:
        return static_expert_conv(module.weight, own_bias(module), info)

    def lowering_parts(self, module: nn.Module, info: ExpertConvInfo, follow_bn: nn.Module | None,
                       in_hw: tuple[int, int] | None) -> tuple[nn.Module, ExpertBank]:
        """π = softmax(fc2(relu(fc1(pool x))) / τ): 1/τ goes into fc2; π sums to one."""
        att = module.attention
        attention = PooledAttention(att.fc1, None, [("kernel", att.fc2)], info.temperature)
        bank = ExpertBank.build(module.weight, own_bias(module), follow_bn, stride=info.stride, padding=info.padding,
                                dilation=info.dilation, groups=info.groups, sums_to_one=True)
        return attention, bank
