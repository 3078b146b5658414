"""Lowered forms shared by the expert-mixing families (CondConv, DyConv, ODConv).

Each of these layers computes, per sample n, with attentions read from the input::

    y_n = α_f ⊙ ( (α_s ⊙ Σ_k a_nk W_k) ∗ (α_c ⊙ x_n) ) + Σ_k a_nk b_k

(CondConv and DyConv: only the routing a; ODConv: a is its kernel attention, α_c its channel,
α_f its filter and α_s its spatial attention, each present or not). α_s is the same for every
expert, so ``Σ_k a_k (α_s ⊙ W_k) = α_s ⊙ Σ_k a_k W_k``: the kernel of sample n is one MatMul of
the routing (N, K) with the experts (K, C_out·C_in/g·k²) and a few broadcast Muls.

The BatchNorm ``(g, h)`` that follows the layer is folded into every expert: ``W_k' = diag(g)·W_k``,
``b_k' = g ⊙ b_k``, and its shift h is added once. (``b_k' = g ⊙ b_k + h`` would only be right when
``Σ_k a_nk = 1``: softmax routing without a filter attention. CondConv's sigmoid routing does not
sum to 1, so h is kept out of the experts unless the routing is known to sum to one.)

Four forms compute this with a dynamic batch:

* ``kernel`` (1×1, padding 0, groups 1): ``K_n = Σ_k a_nk W_k`` with α_f scaling its rows and α_c its
  columns, then one batched MatMul with x (N, C_in, HW) and the per-sample bias. Forming the
  kernel costs K·C_out·C_in per sample, the product C_out·C_in·HW: 1× the arithmetic.
* ``experts``: one static convolution with K·C_out outputs (grouped convolutions keep their
  groups: group j's outputs are its K experts' outputs, side by side), then the routing-weighted
  sum (a batched MatMul, or Mul + ReduceSum when α_f or groups make the weights per channel).
  K× the arithmetic, all of it in a static convolution. α_c scales x first. α_s varies over the
  k×k taps per sample, which no static convolution can follow: this form needs k = 1 or no α_s.
* ``unfold``: the per-sample kernel as above (α_s folded in), then :func:`per_sample_conv_unfold`:
  the input unfolded by ONE static depthwise Conv with one-hot kernels (channel c·k²+t is input
  channel c at tap t, so each group's C_in/g·k² columns are contiguous), and one batched MatMul of
  the kernel (N, g, C_out/g, C_in/g·k²) with it. 1× the arithmetic for any kernel size and only
  static operators: no control flow, so CUDA graphs capture it and tract runs it.
* ``loop``: the per-sample kernel as above, then :class:`PerSampleConv`, which the exporter turns
  into an ONNX ``Loop`` over the batch running one ``Conv`` per sample with that sample's weight
  (``dcd_deploy.exporting.loops``). 1× the arithmetic for any kernel size; control flow, so never
  written for ``--target cuda`` (:data:`CONTROL_FLOW_FORMS`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .folding import bn_affine
from .per_sample import (  # noqa: F401  (the per-sample convolutions are part of this module's interface)
    PER_SAMPLE_DOMAIN,
    PER_SAMPLE_OP,
    Pair,
    pair,
    per_sample_conv,
    per_sample_conv_unfold,
    unfold_taps,
)

FORMS = ("kernel", "experts", "unfold", "loop")
# Forms whose exported graph holds control flow (an ONNX Loop): never offered for --target cuda.
CONTROL_FLOW_FORMS = frozenset({"loop"})



class Attentions(NamedTuple):
    """Per-sample attentions of one layer; None where the family has none."""

    routing: torch.Tensor | None = None  # (N, K) expert weights
    channel: torch.Tensor | None = None  # (N, C_in) α_c
    filter: torch.Tensor | None = None  # (N, C_out) α_f
    spatial: torch.Tensor | None = None  # (N, k·k) α_s


@dataclasses.dataclass
class ExpertBank:
    """The experts of one dynamic convolution in float64, the following BatchNorm folded in."""

    weight: torch.Tensor  # (K, C_out, C_in/g, k, k)
    bias: torch.Tensor | None  # (K, C_out)
    shift: torch.Tensor | None  # (C_out,) added once (the folded BatchNorm's shift)
    stride: int
    padding: int
    dilation: int = 1
    groups: int = 1
    routed: bool = True  # False: one expert, no routing (ODConv with K = 1)
    sums_to_one: bool = False  # the routing is a softmax and no filter attention follows

    @classmethod
    def build(cls, weight: torch.Tensor, bias: torch.Tensor | None, follow_bn: nn.Module | None, *, stride: int,
              padding: int, dilation: int = 1, groups: int = 1, routed: bool = True,
              sums_to_one: bool = False) -> ExpertBank:
        """Experts ``weight`` (K, C_out, C_in/g, k, k) and ``bias`` (K, C_out) with ``follow_bn`` folded."""
        weight = weight.detach().double()
        bias = None if bias is None else bias.detach().double().reshape(weight.shape[0], -1)
        shift = None
        if follow_bn is not None:
            g, h = bn_affine(follow_bn)
            weight = weight * g.view(1, -1, 1, 1, 1)
            bias = None if bias is None else bias * g
            shift = h
        return cls(weight, bias, shift, stride, padding, dilation, groups, routed, sums_to_one)

    @property
    def experts(self) -> int:
        return self.weight.shape[0]

    @property
    def c_out(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> int:
        return self.weight.shape[3]

    def out_hw(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        k = self.dilation * (self.kernel - 1) + 1
        return tuple((n + 2 * self.padding - k) // self.stride + 1 for n in in_hw)  # type: ignore[return-value]


def _buffer(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    module.register_buffer(name, None if value is None else value.float().contiguous())


def _fold_into_kernel(kernel_elems: int, map_elems: int | None) -> bool:
    """Scale the per-sample kernel (rather than the feature map) when the kernel is the smaller."""
    return map_elems is None or kernel_elems <= map_elems


class _Form(nn.Module):
    """What the forms share: the experts as float32 buffers and the folded shift."""

    def __init__(self, bank: ExpertBank, in_hw: tuple[int, int] | None):
        super().__init__()
        self.c_out, self.c_in_g, self.k = bank.c_out, bank.weight.shape[2], bank.kernel
        self.stride, self.padding, self.dilation, self.groups = bank.stride, bank.padding, bank.dilation, bank.groups
        self.routed = bank.routed
        self.in_hw = in_hw
        self.out_hw = None if in_hw is None else bank.out_hw(in_hw)

    def per_sample_kernel(self, att: Attentions, fold_filter: bool, fold_channel: bool) -> torch.Tensor:
        """(N or 1, C_out, C_in/g, k·k): Σ_k a_k W_k with α_s and, if asked, α_f and α_c folded in."""
        shape = (-1, self.c_out, self.c_in_g, self.k * self.k)
        kernel = torch.matmul(att.routing, self.weight).view(shape) if self.routed else self.weight.view(shape)
        if att.spatial is not None:
            kernel = kernel * att.spatial.view(-1, 1, 1, self.k * self.k)
        if att.filter is not None and fold_filter:
            kernel = kernel * att.filter.view(-1, self.c_out, 1, 1)
        if att.channel is not None and fold_channel:
            g = self.groups
            kernel = kernel.view(-1, g, self.c_out // g, self.c_in_g, self.k * self.k)
            kernel = (kernel * att.channel.view(-1, g, 1, self.c_in_g, 1)).view(shape)
        return kernel

    def per_sample_bias(self, att: Attentions, with_shift: bool) -> torch.Tensor | None:
        """(N, C_out) Σ_k a_k b_k (+ shift), or the shift alone (C_out,), or None."""
        shift = self.shift if with_shift else None
        if self.bias is None:
            return shift
        bias = torch.matmul(att.routing, self.bias) if self.routed else self.bias[0]
        return bias if shift is None else bias + shift


class KernelForm(_Form):
    """1×1 (padding 0, groups 1): the per-sample kernel, then one batched MatMul with x."""

    def __init__(self, bank: ExpertBank, in_hw: tuple[int, int] | None):
        super().__init__(bank, in_hw)
        if bank.kernel != 1 or bank.padding != 0 or bank.groups != 1:
            raise ValueError("the kernel form needs a 1×1 convolution with padding 0 and groups 1")
        _buffer(self, "weight", bank.weight.reshape(bank.experts, -1))
        _buffer(self, "bias", bank.bias)
        _buffer(self, "shift", bank.shift)

    def forward(self, x: torch.Tensor, att: Attentions) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        kernel = self.per_sample_kernel(att, True, True).view(-1, self.c_out, self.c_in_g)
        out = torch.matmul(kernel, x.flatten(2))
        bias = self.per_sample_bias(att, True)
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        if self.out_hw is not None:
            return out.view(-1, self.c_out, *self.out_hw)
        return out.view(-1, self.c_out, x.shape[2], x.shape[3])


class ExpertsForm(_Form):
    """One static convolution computing every expert's output, then the routing-weighted sum."""

    def __init__(self, bank: ExpertBank, in_hw: tuple[int, int] | None):
        super().__init__(bank, in_hw)
        K, g = bank.experts, bank.groups
        cg = bank.c_out // g
        # Output channel j·K·cg + k·cg + o is expert k's output o of group j: groups stay contiguous.
        w = bank.weight.view(K, g, cg, *bank.weight.shape[2:]).transpose(0, 1).reshape(K * bank.c_out, *bank.weight.shape[2:])
        bias = bank.bias
        shift = bank.shift
        if shift is not None and bank.sums_to_one:  # Σ_k a_k (b_k + h) = Σ_k a_k b_k + h
            bias = (bias if bias is not None else torch.zeros(K, bank.c_out, dtype=torch.float64)) + shift
            shift = None
        self.conv = nn.Conv2d(w.shape[1] * g, K * bank.c_out, bank.kernel, bank.stride, bank.padding, bank.dilation, g,
                              bias=bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(w.float())
            if bias is not None:
                self.conv.bias.copy_(bias.view(K, g, cg).transpose(0, 1).reshape(-1).float())
        self.conv.requires_grad_(False)
        self.experts = K
        _buffer(self, "shift", None if shift is None else shift.view(-1, 1, 1))

    def forward(self, x: torch.Tensor, att: Attentions) -> torch.Tensor:
        if not experts_ok(self.k, att.spatial is not None):
            raise ValueError("the experts form cannot apply a spatial attention over k×k taps")
        if att.channel is not None:
            x = x * att.channel.view(-1, att.channel.shape[1], 1, 1)
        y = self.conv(x)
        K, g = self.experts, self.groups
        cg = self.c_out // g
        ho, wo = self.out_hw if self.out_hw is not None else (y.shape[2], y.shape[3])
        weights = att.routing
        if att.spatial is not None:  # 1×1: one scalar per sample
            weights = att.spatial if weights is None else weights * att.spatial
        if att.filter is None and g == 1 and weights is not None:
            out = torch.matmul(weights.unsqueeze(1), y.view(-1, K, self.c_out * ho * wo))
        else:
            w = torch.ones(1, K, 1, dtype=y.dtype) if weights is None else weights.unsqueeze(2)
            if att.filter is not None:
                w = w * att.filter.unsqueeze(1)  # (N, K, C_out)
            w = w.expand(-1, K, self.c_out) if w.shape[2] == 1 else w
            w = w.reshape(-1, K, g, cg).transpose(1, 2).unsqueeze(-1)  # (N, g, K, cg, 1)
            out = (y.view(-1, g, K, cg, ho * wo) * w).sum(2)
        out = out.view(-1, self.c_out, ho, wo)
        return out if self.shift is None else out + self.shift


def experts_ok(kernel: int, has_spatial: bool) -> bool:
    """Whether the experts form can follow the layer (α_s over k×k taps cannot be a static conv)."""
    return kernel == 1 or not has_spatial


class _PerSampleKernelForm(_Form):
    """The per-sample kernel (α_s, and α_f / α_c where the kernel is the smaller, folded in), then one
    convolution per sample with it: :meth:`convolve` says how."""

    def __init__(self, bank: ExpertBank, in_hw: tuple[int, int] | None):
        super().__init__(bank, in_hw)
        _buffer(self, "weight", bank.weight.reshape(bank.experts, -1))
        _buffer(self, "bias", bank.bias)
        _buffer(self, "shift", bank.shift)
        kernel_elems = bank.weight[0].numel()
        c_in = bank.weight.shape[2] * bank.groups
        self.fold_channel = _fold_into_kernel(kernel_elems, None if in_hw is None else c_in * in_hw[0] * in_hw[1])
        out_elems = None if in_hw is None else self.c_out * self.out_hw[0] * self.out_hw[1]
        self.fold_filter = _fold_into_kernel(kernel_elems, out_elems)

    def convolve(self, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, shared: bool) -> torch.Tensor:
        """``kernel`` (N, C_out, C_in/g, k, k), or (1, …) when ``shared`` by every sample."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, att: Attentions) -> torch.Tensor:
        if att.channel is not None and not self.fold_channel:
            x = x * att.channel.view(-1, att.channel.shape[1], 1, 1)
        kernel = self.per_sample_kernel(att, self.fold_filter, self.fold_channel)
        # Decided from the layer, not from kernel.shape[0]: a shape test is frozen at export time at the
        # example's batch size (1), which would put a full copy of every per-sample kernel in the graph.
        shared = not self.routed and att.spatial is None and (att.filter is None or not self.fold_filter) \
            and (att.channel is None or not self.fold_channel)
        kernel = kernel.reshape(-1, self.c_out, self.c_in_g, self.k, self.k)
        scale_after = att.filter is not None and not self.fold_filter
        bias = self.per_sample_bias(att, not scale_after)
        out = self.convolve(x, kernel, bias, shared)
        if scale_after:
            out = out * att.filter.view(-1, self.c_out, 1, 1)
            if self.shift is not None:
                out = out + self.shift.view(-1, 1, 1)
        return out


class LoopForm(_PerSampleKernelForm):
    """One convolution per sample with its kernel: an ONNX Loop once exported."""

    def convolve(self, x, kernel, bias, shared):
        if shared:  # one expert and no per-sample attention on the kernel
            kernel = kernel.expand(x.shape[0], -1, -1, -1, -1)
        return per_sample_conv(x, kernel, bias, self.stride, self.padding, self.dilation, self.groups)


class UnfoldForm(_PerSampleKernelForm):
    """No control flow: the input unfolded by one static Conv, then one batched MatMul with the
    per-sample kernel (:func:`per_sample_conv_unfold`). α_s stays folded in the kernel: the kernel is
    formed per sample anyway and holds C_out·C_in/g·k² values, fewer than the unfolded map's
    C_in·k²·H'W' whenever C_out/g < H'W'. A kernel shared by every sample broadcasts in the MatMul."""

    def convolve(self, x, kernel, bias, shared):
        return per_sample_conv_unfold(x, kernel, bias, self.stride, self.padding, self.dilation, self.groups,
                                      out_hw=self.out_hw)


FORM_TYPES: dict[str, type[_Form]] = {"kernel": KernelForm, "experts": ExpertsForm, "unfold": UnfoldForm,
                                      "loop": LoopForm}


def dense(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias or None) in float64 of a Linear or a 1×1 Conv2d."""
    weight = m.weight.detach().double().reshape(m.weight.shape[0], -1)
    return weight, None if m.bias is None else m.bias.detach().double()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        if bias is not None:
            layer.bias.copy_(bias.float())
    return layer.requires_grad_(False)


class RoutingArgument(nn.Module):
    """The routing is computed outside the layer and passed in as its second argument (CondConv)."""

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> Attentions:
        return Attentions(routing=routing_weights)


class PooledAttention(nn.Module):
    """``relu(fc(avgpool(x)))``, then ONE Linear computing every head, 1/τ folded in.

    ``heads`` are ``(name, size)`` in the order of ``head_weight``'s rows: ``channel``, ``filter``
    and ``spatial`` heads take a sigmoid (one Sigmoid over their rows together), ``kernel`` a
    softmax over the experts. ``fc_bn``: the BatchNorm between fc and the ReLU, folded into fc.
    """

    SIGMOID = ("channel", "filter", "spatial")

    def __init__(self, fc: nn.Module, fc_bn: nn.Module | None, heads: list[tuple[str, nn.Module]], temperature: float):
        super().__init__()
        w, b = dense(fc)
        if fc_bn is not None:
            a, shift = bn_affine(fc_bn)
            w, b = w * a.view(-1, 1), shift if b is None else a * b + shift
        self.fc = _linear(w, b)
        heads = sorted(heads, key=lambda h: h[0] == "kernel")  # sigmoid heads first
        weights = [dense(m) for _, m in heads]
        zeros = lambda wt: torch.zeros(wt.shape[0], dtype=torch.float64)
        self.heads = _linear(torch.cat([wt for wt, _ in weights]) / temperature,
                             torch.cat([zeros(wt) if bt is None else bt for wt, bt in weights]) / temperature)
        self.sizes = [(name, wt.shape[0]) for (name, _), (wt, _) in zip(heads, weights)]
        self.n_sigmoid = sum(size for name, size in self.sizes if name in self.SIGMOID)

    def forward(self, x: torch.Tensor) -> Attentions:
        z = self.heads(F.relu(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))))
        sig = torch.sigmoid(z[:, : self.n_sigmoid]) if self.n_sigmoid else None
        found, start = {}, 0
        for name, size in self.sizes:
            if name in self.SIGMOID:
                found[name] = sig[:, start:start + size]
                start += size
        if start < z.shape[1]:
            found["routing"] = torch.softmax(z[:, start:], 1)
        return Attentions(**found)


class LoweredDynamicConv(nn.Module):
    """A dynamic convolution lowered: its attention module, then one of the forms.

    ``attention(x, *extra)`` returns the layer's :class:`Attentions` (the block's routing for
    CondConv, which takes it as a second argument); ``forward`` takes the original layer's
    positional arguments.
    """

    def __init__(self, attention: nn.Module, bank: ExpertBank, form: str, in_hw: tuple[int, int] | None):
        super().__init__()
        if form not in FORM_TYPES:
            raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
        self.form_name = form
        self.attention = attention
        self.form = FORM_TYPES[form](bank, in_hw)
        self.eval()

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self.form(x, self.attention(x, *extra))

