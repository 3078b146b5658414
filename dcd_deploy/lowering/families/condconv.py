"""CondConv (conditionally parameterised convolution, as in timm's ``CondConv2d``).

The layer, per sample n, with routing weights ``r_n`` (K values) computed outside the layer::

    W_n = Σ_k r_nk W_k            b_n = Σ_k r_nk b_k            y_n = W_n ∗ x_n + b_n

In timm the block computes ``r = sigmoid(routing_fn(avgpool(x)))`` once and passes it as the
second argument to each of its CondConv convolutions (``conv_pw``, ``conv_dw``, ``conv_pwl``), so
the layer is recognised at convolution level and takes ``(x, routing_weights)``; the routing is
the layer's only attention (``"routing"``).

Recognised structure (attribute names and shapes, never class names): ``num_experts`` K,
``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``, ``dilation``,
``groups``; ``weight`` ``[K, C_out·C_in/g·k·k]`` (one flattened expert kernel per row); ``bias``
``[K, C_out]`` or None; static (not TF "same") padding; a ``forward`` that takes the routing
weights as its second argument. The static part is one convolution holding the experts' mean.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..dynamic_forms import ExpertBank, RoutingArgument
from ..family import Mismatch, register_family
from ._expert_conv import (
    ExpertConvInfo,
    channels,
    check_bias,
    expert_count_hint,
    expert_weight,
    own_bias,
    read_geometry,
    shape_text,
    static_expert_conv,
)
from ._expert_lowering import ExpertMixingFamily

KIND = "CondConv2d"


class _TimingRouting(nn.Module):
    """timm's routing, ``sigmoid(Linear(avgpool(x)))``, for timing a layer alone: computed from the
    input in the graph, so that no tool folds the per-sample kernel into a constant."""

    def __init__(self, c_in: int, experts: int):
        super().__init__()
        self.fn = nn.Linear(c_in, experts)

    def forward(self, x):
        return (torch.sigmoid(self.fn(x.mean((2, 3)))),)


def _positional_params(module: nn.Module) -> int | None:
    """How many positional arguments ``module.forward`` takes (None: unknown or variadic)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


@register_family
class CondConvFamily(ExpertMixingFamily):
    """timm-style CondConv2d: flattened expert kernels, routing passed in by the block."""

    name = "condconv"
    paper = "condconv"
    title = "CondConv"

    def looks_dynamic(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "num_experts", None), int) and expert_count_hint(module) is not None

    def match(self, module: nn.Module) -> ExpertConvInfo | Mismatch:
        f = self.name
        experts, weight = module.num_experts, expert_weight(module)
        if weight.ndim != 2 or weight.shape[0] != experts:
            return Mismatch(f, f"has num_experts={experts} but weight is {shape_text(weight)}, not timm's "
                               f"[K={experts}, C_out·C_in/g·k·k] (routing computed inside the layer is not supported)")
        geometry = read_geometry(module, f)
        if isinstance(geometry, Mismatch):
            return geometry
        if getattr(module, "dynamic_padding", False):
            return Mismatch(f, "uses TF-style 'same' padding computed from the input size (dynamic_padding=True); "
                               "build the network with symmetric padding")
        chans = channels(module, "in_channels", "out_channels", geometry.groups, f)
        if isinstance(chans, Mismatch):
            return chans
        c_in, c_out = chans
        per_expert = c_out * (c_in // geometry.groups) * geometry.kernel ** 2
        if weight.shape[1] != per_expert:
            return Mismatch(f, f"weight is {shape_text(weight)} but {c_out}×{c_in // geometry.groups}×"
                               f"{geometry.kernel}×{geometry.kernel} = {per_expert} values per expert are expected")
        bias = own_bias(module)
        bad_bias = check_bias(bias, experts, c_out, f)
        if bad_bias is not None:
            return bad_bias
        if _positional_params(module) == 1:
            return Mismatch(f, "forward takes only the input, but CondConv2d takes (x, routing_weights)")
        return ExpertConvInfo(
            family=f, kind=KIND, c_in=c_in, c_out=c_out, kernel=geometry.kernel, stride=geometry.stride,
            padding=geometry.padding, dilation=geometry.dilation, groups=geometry.groups, experts=experts,
            attentions=("routing",), bias=bias is not None, names={"routing": "forward argument 2"},
        )

    def extra_inputs(self, info: ExpertConvInfo) -> nn.Module:
        return _TimingRouting(info.c_in, info.experts)

    def static_part(self, module: nn.Module, info: ExpertConvInfo) -> nn.Module:
        return static_expert_conv(module.weight, own_bias(module), info)

    def lowering_parts(self, module: nn.Module, info: ExpertConvInfo, follow_bn: nn.Module | None,
                       in_hw: tuple[int, int] | None) -> tuple[nn.Module, ExpertBank]:
        """The routing comes in as the second argument; the experts are timm's flattened rows."""
        weight = module.weight.view(info.experts, info.c_out, info.c_in // info.groups, info.kernel, info.kernel)
        bank = ExpertBank.build(weight, own_bias(module), follow_bn, stride=info.stride, padding=info.padding,
                                dilation=info.dilation, groups=info.groups)
        return RoutingArgument(), bank
