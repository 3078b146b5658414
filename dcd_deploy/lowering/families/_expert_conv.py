"""Structural checks shared by the expert-mixing families (CondConv, DyConv, ODConv).

These layers hold K expert kernels and mix them per sample with attentions read from the input,
then run one grouped convolution over the batch. What they have in common, and what this module
reads from a layer without running it:

* the expert bank: a ``weight`` Parameter whose leading dimension is the number of experts K
  (``[K, C_out, C_in/g, k, k]`` in DyConv/ODConv code, ``[K, C_out·C_in/g·k·k]`` in timm's CondConv);
* the convolution geometry, stored as plain attributes (ints or pairs): square kernel, equal
  strides, symmetric integer padding, equal dilations, groups.

:func:`expert_count_hint` is the generic detector of "a module that computes its convolution
weight from the input": a module that is not a ``torch.nn`` convolution and has a ``weight``
Parameter of rank 5, or of rank 2/3 whose leading dimension equals an integer ``num_experts``,
``K`` or ``kernel_num`` attribute. Each family claims such modules in ``looks_dynamic`` and
explains in its :class:`Mismatch` why one is not a layer as published.

The module is private to the families package (its name starts with ``_``, so the family
discovery does not treat it as a family).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..family import LayerInfo, Mismatch

EXPERT_COUNT_NAMES = ("num_experts", "K", "kernel_num")
ODCONV_HEADS = ("channel_fc", "filter_fc", "spatial_fc", "kernel_fc")


@dataclasses.dataclass(kw_only=True)
class ExpertConvInfo(LayerInfo):
    """A recognised expert-mixing convolution: geometry, bias, temperature and part names."""

    dilation: int = 1
    bias: bool = False
    temperature: float | None = None  # the attention's softmax/sigmoid temperature (None: none)
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # role -> attribute path


@dataclasses.dataclass(frozen=True)
class Geometry:
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int


def shape_text(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def expert_weight(module: nn.Module) -> torch.Tensor | None:
    """The module's own ``weight`` Parameter (not a child's), or None."""
    w = module._parameters.get("weight")
    return w if isinstance(w, torch.Tensor) else None


def own_bias(module: nn.Module) -> torch.Tensor | None:
    b = module._parameters.get("bias")
    return b if isinstance(b, torch.Tensor) else None


def expert_count_hint(module: nn.Module) -> int | None:
    """K when the module looks like it mixes K expert kernels (see the module docstring), else None."""
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return None
    w = expert_weight(module)
    if w is None:
        return None
    counts = [getattr(module, n) for n in EXPERT_COUNT_NAMES if isinstance(getattr(module, n, None), int)]
    if w.ndim == 5:
        return int(w.shape[0])
    if w.ndim in (2, 3) and int(w.shape[0]) in counts:
        return int(w.shape[0])
    return None


def odconv_like(module: nn.Module) -> bool:
    """ODConv's signature: a ``kernel_num`` count or an attention with its per-dimension heads."""
    att = getattr(module, "attention", None)
    return hasattr(module, "kernel_num") or (isinstance(att, nn.Module) and any(hasattr(att, h) for h in ODCONV_HEADS))


def _single(value: object, what: str) -> int | str:
    """An int from an int or an all-equal tuple of ints; otherwise the reason it is not one."""
    if isinstance(value, bool):
        return f"{what} is {value!r}"
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
        return value[0] if len(set(value)) == 1 else f"{what} {tuple(value)} is not the same along H and W"
    return f"{what} is {value!r}, not an integer"


def read_geometry(module: nn.Module, family: str) -> Geometry | Mismatch:
    """Kernel, stride, padding, dilation and groups from the layer's attributes."""
    values = {}
    for name, default in (("kernel_size", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)):
        raw = getattr(module, name, default)
        if raw is None:
            return Mismatch(family, f"has no {name} attribute")
        value = _single(raw, name)
        if isinstance(value, str):
            return Mismatch(family, value)
        if value < (0 if name == "padding" else 1):
            return Mismatch(family, f"{name} is {value}")
        values[name] = value
    return Geometry(values["kernel_size"], values["stride"], values["padding"], values["dilation"], values["groups"])


def channels(module: nn.Module, in_name: str, out_name: str, groups: int, family: str) -> tuple[int, int] | Mismatch:
    c_in, c_out = getattr(module, in_name, None), getattr(module, out_name, None)
    if not isinstance(c_in, int) or not isinstance(c_out, int):
        return Mismatch(family, f"has no integer {in_name}/{out_name} attributes")
    if c_in % groups or c_out % groups:
        return Mismatch(family, f"{in_name}={c_in} and {out_name}={c_out} are not divisible by groups={groups}")
    return c_in, c_out


@dataclasses.dataclass(frozen=True)
class ExpertBank:
    """A layer's expert weight [K, C_out, C_in/g, k, k] with its geometry and channel counts, checked."""

    weight: torch.Tensor
    experts: int
    geometry: Geometry
    c_in: int
    c_out: int


def match_expert_bank(module: nn.Module, count_attr: str, family: str) -> ExpertBank | Mismatch:
    """The expert bank of a DyConv/ODConv-style layer (``in_planes``/``out_planes`` and an integer
    ``count_attr`` naming K), or why it is not one."""
    weight = expert_weight(module)
    experts = int(weight.shape[0])
    count = getattr(module, count_attr, None)
    if isinstance(count, int) and count != experts:
        return Mismatch(family, f"{count_attr}={count} but weight is {shape_text(weight)}")
    geometry = read_geometry(module, family)
    if isinstance(geometry, Mismatch):
        return geometry
    chans = channels(module, "in_planes", "out_planes", geometry.groups, family)
    if isinstance(chans, Mismatch):
        return chans
    c_in, c_out = chans
    expected = (experts, c_out, c_in // geometry.groups, geometry.kernel, geometry.kernel)
    if tuple(weight.shape) != expected:
        return Mismatch(family, f"weight is {shape_text(weight)}, expected [{', '.join(map(str, expected))}]")
    return ExpertBank(weight, experts, geometry, c_in, c_out)


def check_bias(bias: torch.Tensor | None, experts: int, c_out: int, family: str) -> Mismatch | None:
    if bias is not None and tuple(bias.shape) != (experts, c_out):
        return Mismatch(family, f"bias is {shape_text(bias)}, expected [{experts}, {c_out}] (one bias per expert)")
    return None


def is_conv1x1(m: object, c_in: int | None, c_out: int | None) -> bool:
    """A 1×1, stride-1, ungrouped Conv2d (or a Linear) from c_in to c_out features (None: any)."""
    if isinstance(m, nn.Conv2d):
        ok = m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid") and m.groups == 1
        n_in, n_out = m.in_channels, m.out_channels
    elif isinstance(m, nn.Linear):
        ok, n_in, n_out = True, m.in_features, m.out_features
    else:
        return False
    return ok and (c_in is None or n_in == c_in) and (c_out is None or n_out == c_out)


def describe_layer(m: object) -> str:
    if isinstance(m, nn.Conv2d):
        return f"Conv2d({m.in_channels}, {m.out_channels}, kernel {m.kernel_size}, groups {m.groups})"
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}, {m.out_features})"
    return type(m).__name__ if m is not None else "missing"


def is_global_avgpool(m: object) -> bool:
    if not isinstance(m, nn.AdaptiveAvgPool2d):
        return False
    size = m.output_size
    return size in (1, (1, 1), [1, 1])


def read_temperature(owner: nn.Module, path: str, family: str) -> float | Mismatch:
    """The attention temperature: a positive number attribute (annealed in training, not in the state dict)."""
    t = getattr(owner, "temperature", None)
    if isinstance(t, torch.Tensor) and t.numel() == 1:
        t = float(t)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        return Mismatch(family, f"{path}.temperature is {t!r}, expected a positive number")
    return float(t)


class StaticExpertConv(nn.Module):
    """A layer's static part: one convolution of an expert's shape holding the mean of the K experts.

    Extra positional arguments (CondConv's routing weights) are accepted and ignored, so it
    replaces the layer in place.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: Geometry):
        super().__init__()
        c_out, c_in_g, k = weight.shape[1], weight.shape[2], weight.shape[3]
        g = geometry
        self.conv = nn.Conv2d(c_in_g * g.groups, c_out, k, g.stride, g.padding, g.dilation, g.groups,
                              bias=bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(weight.mean(0))
            if bias is not None:
                self.conv.bias.copy_(bias.mean(0))

    def forward(self, x: torch.Tensor, *_: object) -> torch.Tensor:
        return self.conv(x)


def static_expert_conv(weight: torch.Tensor, bias: torch.Tensor | None, info: ExpertConvInfo) -> StaticExpertConv:
    """The static part of ``info``'s layer from its expert bank ``weight`` [K, C_out, C_in/g, k, k]."""
    w = weight.detach().reshape(info.experts, info.c_out, info.c_in // info.groups, info.kernel, info.kernel)
    geometry = Geometry(info.kernel, info.stride, info.padding, info.dilation, info.groups)
    return StaticExpertConv(w, None if bias is None else bias.detach(), geometry)
