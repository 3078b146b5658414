"""DCD convolutions (ResNet ``conv_dy`` / ``conv_basic_dy``, MobileNetV2 ``DYModule``).

The layer (eval mode), with ``hs(t) = clip(t + 3, 0, 6) / 3``::

    y   = SE(fc0 · pool(x))               SE(y) = y ⊙ hs(W_se y)
    Φ   = W_φ y   (L×L per sample)        s = hs(W_s y)   (C_out per sample)
    z   = a1 ⊙ Q x + b1                   (bn1 folded into Q)
    u   = a2 ⊙ (Φ z) + b2 + z = M z + b2, M = diag(a2)·Φ + I
    out = P u + s ⊙ (W0 ∗ x)

With the BatchNorm (g, h) that follows the layer in its block folded in as well::

    out' = P' M z + s ⊙ (W0' ∗ x) + c,    P' = diag(g)·P,  W0' = diag(g)·W0,  c = g ⊙ P b2 + h

The attention branch is folded as ``lowering/attention.py`` describes (M comes out of one Gemm);
the /3 of s moves into W0'. Two lowered forms compute this:

* ``factored``: conv(W0'/3) and conv(Q') read x, one batched MatMul applies M to the L latent
  channels, conv(P') maps back; works for every kernel size and stride.
* ``merged`` (1×1, stride 1): the per-sample kernel K = diag(s)·W0'/3 + P'·M·Q' (C_out×C_in)
  and bias P'·M·b1 + c are formed from small matrices, then one batched MatMul with x. It costs
  C_out·L·(L + C_in) per sample to form K and saves the Q conv, the P conv and the elementwise
  tail: worth it when the feature map is large.

* ``grouped`` (offered only for a fixed-batch, fixed-size export): every sample's full kernel
  diag(s)·W0'/3 + P'·M·Q' (the low-rank term at the centre tap of a k×k kernel) and bias are
  formed, and the batch runs as one convolution with ``group = N`` and that computed weight
  (``lowering/grouped.py``); the file is then batch-specific.

With a known input size the latent and output maps are reshaped with constant shapes that copy
the batch dimension; with a dynamic size, M and K are applied by ``shapes.channel_matmul`` (no
shape arithmetic). The layer's static part is its ``conv`` (W0).

``LowerOptions.channels_last`` (int8 exports of networks without depthwise convolutions, known
size, factored form): the attention pool is a pooling-matrix product and the latent product is
``(B, HW, L)·Mᵀ`` on the map read channels-last, so ONNX Runtime, which runs the int8
convolutions in NHWC, keeps the whole layer in that layout (BENCHMARKS.md, "Int8"). The same
arithmetic; a float32 runtime would pay real transposes for it, so float exports never use it.

**Cost model.** Both forms do the static convolution's work; they differ in what they add on top.

On the **CPU** (``target="cpu"``), counted per sample in MAC-equivalents:

* ``factored`` adds the Q conv, the L×L MatMul and the P conv, ``HW·(L·C_in + L² + C_out·L)``
  MACs, plus full passes over the C_out×H×W output that a static conv does not make: the
  per-channel Mul by s, the Add of the two branches and, on ONNX Runtime's CPU provider, the
  layout reorders around them (its blocked NCHWc convolutions cannot take a broadcast Mul).
  Each pass moves memory rather than doing arithmetic; ``PASS_COST`` converts one element of
  such a pass into MAC-equivalents.
* ``merged`` adds forming the per-sample kernel, ``C_out·L·(L + C_in)`` MACs (a batch of small
  matrix products), the C_out×C_in kernel itself (``KERNEL_COST`` per element: it is written by
  small unfused ops and read back by the batched MatMul, once per sample, where a static conv
  reads its packed weights once per batch), and one pass over the output (its bias). On small
  maps with many channels the kernel is larger than the output, and the factored form wins.

The factored form needs ``FACTORED_PASSES`` passes, the merged one ``MERGED_PASSES``, and the
factored form's extra nodes cost ``FACTORED_FIXED`` per layer. The constants come from timing
both forms of every distinct 1×1 layer of mobilenetv2_dcd and resnet50_dcd at batch 1 and 8 on
a 2-core x86 CPU (``python benchmarks/fit_cost_model.py``, see BENCHMARKS.md): with them the
model picks the faster form except where the two are within a few per cent. Only the difference
of the pass terms matters to the choice; :func:`cpu_costs` takes it as ``pass_difference``.

The ``grouped`` form (:func:`grouped_cost`) pays forming its kernel like ``merged``
(``GROUPED_KERNEL_COST`` per element of the C_out×C_in×k×k kernel) and no output pass (bias and
activation are fused into the convolution), but its convolution takes a computed weight, which
ONNX Runtime's CPU provider runs unpacked in NCHW instead of its blocked NCHWc kernels:
``GROUPED_CONV_PENALTY`` per MAC of the convolution, small for 1×1 (one GEMM) and large for k×k
(im2col first). Timed per layer at batch 1 on the 2-core CPU (mobilenetv2_dcd, resnet50_dcd,
resnet18_dcd at 224×224), it beats ``merged`` on most 1×1 layers with up to ~500 input channels
and both portable forms on large maps (e.g. 16→96 at 112×112: 0.67 ms vs 1.13 merged, 2.58
factored), and loses on every 3×3 layer (1.4–7× the factored form).

On **CUDA** (``target="cuda"``), in microseconds: a GPU runs a batch-1 DCD layer far below its
arithmetic rate, so the cost is the kernels launched (``CUDA_LAUNCH_US`` each: the factored form
launches the Q conv, the MatMul, the P conv and the Mul/Add tail, the merged form the five small
products and sums that form its kernel, the batched MatMul and its bias) plus the extra bytes
moved at ``CUDA_BYTES_PER_US``, plus arithmetic at ``CUDA_MACS_PER_US``. CUDA graphs shrink the
launch term. ``--tune`` measures on the target's ONNX Runtime provider instead of estimating.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..attention import LoweredAttention, match_attention
from ..costmodel import CostChooser, check_target
from ..family import DcdLayerInfo, LayerFamily, LayerInfo, LowerOptions, Mismatch, describe_parts, register_family
from ..folding import bn_affine, identity_affine, is_foldable_bn
from ..grouped import FORM as GROUPED
from ..grouped import GroupedDcdConv
from ..pooling import ExactAdaptiveAvgPool
from ..shapes import channel_matmul, keep_batch_reshape

PARTS = ["conv", "q|conv_q", "p|conv_p", "bn1", "bn2", "avg_pool", "fc", "fc_phi", "fc_scale", "hs"]
FORMS = ("factored", "merged")


PASS_COST = 10.0
FACTORED_PASSES = 3.0
MERGED_PASSES = 1.0
KERNEL_COST = 55.0
FACTORED_FIXED = 2.0e5  # its extra nodes (Q and P convs, MatMul, reorders), a few µs per layer

CUDA_LAUNCH_US = 4.0
CUDA_BYTES_PER_US = 2.0e6  # ~2 TB/s effective on small tensors
CUDA_MACS_PER_US = 2.0e7  # ~20 TMAC/s (TF32 / fp16 tensor cores, well under peak at these sizes)
CUDA_FACTORED_LAUNCHES = 5  # Q conv, MatMul, P conv, Mul, Add (W0's conv is the static one)
CUDA_MERGED_LAUNCHES = 7  # P·M, s⊙W0, (P·M)·Q, add, bias product, batched MatMul, bias add


def out_pixels(info: LayerInfo, in_shape: tuple[int, ...]) -> int:
    """Pixels of the layer's output map for an input of ``in_shape`` (N, C, H, W)."""
    h, w = in_shape[2], in_shape[3]
    ho = (h + 2 * info.padding - info.kernel) // info.stride + 1
    wo = (w + 2 * info.padding - info.kernel) // info.stride + 1
    return ho * wo


def _factored_macs(c_in: int, c_out: int, L: int, hw: int) -> int:
    """MACs the factored form adds per sample: the Q conv, the L×L MatMul and the P conv."""
    return hw * (L * c_in + L * L + c_out * L)


def _kernel_macs(c_in: int, c_out: int, L: int) -> int:
    """MACs the merged form spends per sample forming P′·M·Q′ of its kernel."""
    return c_out * L * (L + c_in)


def cpu_costs(c_in: int, c_out: int, L: int, hw: int, merged_ok: bool = True, kernel_cost: float = KERNEL_COST,
              pass_difference: float = (FACTORED_PASSES - MERGED_PASSES) * PASS_COST,
              factored_fixed: float = FACTORED_FIXED) -> dict[str, float]:
    """The CPU costs of a layer with an ``hw``-pixel output (constants overridable, for fitting them)."""
    pass_cost = pass_difference / (FACTORED_PASSES - MERGED_PASSES)
    costs = {"factored": _factored_macs(c_in, c_out, L, hw) + FACTORED_PASSES * pass_cost * hw * c_out + factored_fixed}
    if merged_ok:
        costs["merged"] = _kernel_macs(c_in, c_out, L) + kernel_cost * c_out * c_in + MERGED_PASSES * pass_cost * hw * c_out
    return costs


def form_costs(info: DcdLayerInfo, in_shape: tuple[int, ...], target: str = "cpu", **cpu_constants: float) -> dict[str, float]:
    """Estimated extra cost over the static convolution, per sample: MAC-equivalents on ``cpu``,
    microseconds on ``cuda``. Keys are the forms the layer allows. ``cpu_constants`` override the
    CPU model's (``kernel_cost``, ``pass_difference``, ``factored_fixed``; see :func:`cpu_costs`)."""
    check_target(target)
    hw = out_pixels(info, in_shape)
    c_in, c_out, L = info.c_in, info.c_out, info.latent
    merged_ok = (info.kernel, info.stride) == (1, 1)
    if target == "cpu":
        return cpu_costs(c_in, c_out, L, hw, merged_ok, **cpu_constants)
    factored_macs = _factored_macs(c_in, c_out, L, hw)
    merged_macs = _kernel_macs(c_in, c_out, L) + 2 * c_out * c_in
    # cuda: bytes beyond the static conv's, float32 (fp16 halves both forms alike)
    factored_bytes = 4 * hw * (2 * L + 2 * L + L + 4 * c_out)  # Q out, MatMul in/out, P in, Mul + Add passes
    merged_bytes = 4 * (2 * c_out * c_in + 2 * hw * c_out)  # kernel written + read, bias pass
    costs = {"factored": CUDA_FACTORED_LAUNCHES * CUDA_LAUNCH_US + factored_bytes / CUDA_BYTES_PER_US
             + factored_macs / CUDA_MACS_PER_US}
    if merged_ok:
        costs["merged"] = (CUDA_MERGED_LAUNCHES * CUDA_LAUNCH_US + merged_bytes / CUDA_BYTES_PER_US
                           + merged_macs / CUDA_MACS_PER_US)
    return costs


GROUPED_KERNEL_COST = 55.0  # per element of the per-sample k×k kernel, as KERNEL_COST
# per MAC of the convolution: a computed weight runs without ORT's packed NCHWc kernels, as one
# GEMM for a 1×1 kernel, after an im2col copy for k×k
GROUPED_CONV_PENALTY = {1: 0.01, 0: 0.1}
CUDA_GROUPED_LAUNCHES = 6  # P·M, ·Q, s⊙W0, add, bias product (+ add), the convolution


def grouped_cost(info: LayerInfo, in_shape: tuple[int, ...], target: str = "cpu",
                 kernel_cost: float = GROUPED_KERNEL_COST, conv_penalty: float | None = None) -> float:
    """Estimated extra cost of the static-batch ``grouped`` form per sample (units of :func:`form_costs`)."""
    check_target(target)
    c_in, c_out, L, k2 = info.c_in, info.c_out, info.latent, info.kernel**2
    kernel = c_out * c_in * k2
    if target == "cpu":
        penalty = GROUPED_CONV_PENALTY[1 if info.kernel == 1 else 0] if conv_penalty is None else conv_penalty
        return _kernel_macs(c_in, c_out, L) + kernel_cost * kernel + penalty * kernel * out_pixels(info, in_shape)
    return (CUDA_GROUPED_LAUNCHES * CUDA_LAUNCH_US + 4 * 2 * kernel / CUDA_BYTES_PER_US
            + (_kernel_macs(c_in, c_out, L) + kernel) / CUDA_MACS_PER_US)


def cost_chooser(target: str = "cpu", **cpu_constants: float) -> CostChooser:
    """The cost-model chooser for ``target``, with other constants for this family's CPU model
    (``kernel_cost``, ``pass_difference``, ``factored_fixed``; see :func:`cpu_costs`)."""
    return CostChooser(target, {DcdConvFamily.name: cpu_constants} if cpu_constants else {})


def _pool_size(pool: nn.Module) -> int | None:
    if not isinstance(pool, nn.AdaptiveAvgPool2d):
        return None
    size = pool.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return size[0] if size[0] == size[1] and size[0] in (1, 2) else None


def _match_convs(module: nn.Module, f: str, q_name: str, p_name: str) -> tuple[int, int, int, int] | Mismatch:
    """(kernel, stride, padding, L) of the W0, Q and P convolutions, or why they do not fit."""
    conv, q, p = module.conv, getattr(module, q_name), getattr(module, p_name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.bias is not None or conv.dilation != (1, 1):
        return Mismatch(f, "conv is not a bias-free, ungrouped, undilated Conv2d")
    k, s, pad = conv.kernel_size, conv.stride, conv.padding
    if k[0] != k[1] or s[0] != s[1] or pad[0] != pad[1] or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return Mismatch(f, f"conv has a non-square kernel/stride/padding ({k}, {s}, {pad})")
    k, s, pad = k[0], s[0], pad[0]
    if k % 2 == 0 or pad != k // 2:
        return Mismatch(f, f"conv kernel {k} with padding {pad} has no centre tap aligned with the 1×1 q (needs odd k, padding k//2)")
    c_in, c_out = conv.in_channels, conv.out_channels
    if not isinstance(q, nn.Conv2d) or q.kernel_size != (1, 1) or q.stride != (s, s) or q.padding != (0, 0) or q.groups != 1 or q.bias is not None:
        return Mismatch(f, f"{q_name} is not a bias-free 1×1 Conv2d with stride {s} and padding 0")
    if q.in_channels != c_in:
        return Mismatch(f, f"{q_name} takes {q.in_channels} channels but conv takes {c_in}")
    dim = q.out_channels
    if not isinstance(p, nn.Conv2d) or p.kernel_size != (1, 1) or p.stride != (1, 1) or p.groups != 1 or p.bias is not None:
        return Mismatch(f, f"{p_name} is not a bias-free 1×1 Conv2d with stride 1")
    if (p.in_channels, p.out_channels) != (dim, c_out):
        return Mismatch(f, f"{p_name} maps {p.in_channels}→{p.out_channels} but L={dim} and C_out={c_out}")
    return k, s, pad, dim


class LoweredDcdConv(LoweredAttention):
    """A DCD convolution as static convolutions, small Gemms and one batched MatMul."""

    def __init__(self, info: DcdLayerInfo, form: str, in_hw: tuple[int, int] | None, channels_last: bool = False):
        super().__init__(info.c_in * info.pool**2, info.squeeze, info.latent, info.c_out)
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
        if form == "merged" and (info.kernel != 1 or info.stride != 1):
            raise ValueError("the merged form needs a 1×1 stride-1 layer")
        self.form = form
        self.kind = info.kind
        self.c_in = info.c_in
        self.in_hw = in_hw
        k, s, pad = info.kernel, info.stride, info.padding
        self.out_hw = None if in_hw is None else tuple((n + 2 * pad - k) // s + 1 for n in in_hw)
        self.channels_last = channels_last and in_hw is not None and form == "factored"
        self.pool = ExactAdaptiveAvgPool(info.pool, in_hw, self.channels_last, bin_major=True)
        if form == "factored":
            self.conv = nn.Conv2d(info.c_in, info.c_out, k, s, pad, bias=False)
            self.q = nn.Conv2d(info.c_in, info.latent, 1, s, 0)
            self.p = nn.Conv2d(info.latent, info.c_out, 1)
        else:
            self.register_buffer("w0", torch.zeros(info.c_out, info.c_in))
            self.register_buffer("q_w", torch.zeros(info.latent, info.c_in))
            self.register_buffer("q_b", torch.zeros(info.latent, 1))
            self.register_buffer("p_w", torch.zeros(info.c_out, info.latent))
            self.register_buffer("p_b", torch.zeros(info.c_out, 1))

    @classmethod
    def from_layer(cls, layer: nn.Module, info: DcdLayerInfo, follow_bn: nn.Module | None,
                   options: LowerOptions) -> LoweredDcdConv:
        new = cls(info, options.form, options.in_hw, options.channels_last)
        L = info.latent
        with torch.no_grad():
            a1, b1 = bn_affine(layer.bn1)
            a2, b2 = bn_affine(layer.bn2)
            g, h = bn_affine(follow_bn) if follow_bn is not None else identity_affine(info.c_out)
            new.fold_attention(layer, a2)
            if new.pool.bin_major:  # fc reads the 2×2-pooled features bin-major: feature b·C + c, not c·4 + b
                new.fc.weight.copy_(new.fc.weight.view(-1, info.c_in, 4).transpose(1, 2).reshape(-1, 4 * info.c_in))
            w0 = layer.conv.weight.double() * g.view(-1, 1, 1, 1) / 3.0
            qw = getattr(layer, info.names["q"]).weight.double()[:, :, 0, 0] * a1.view(-1, 1)
            pw = getattr(layer, info.names["p"]).weight.double()[:, :, 0, 0]
            p_fold = pw * g.view(-1, 1)
            c = g * (pw @ b2) + h
            if options.form == "factored":
                new.conv.weight.copy_(w0.float())
                new.q.weight.copy_(qw.view(L, -1, 1, 1).float())
                new.q.bias.copy_(b1.float())
                new.p.weight.copy_(p_fold.view(info.c_out, L, 1, 1).float())
                new.p.bias.copy_(c.float())
            else:
                new.w0.copy_(w0[:, :, 0, 0].float())
                new.q_w.copy_(qw.float())
                new.q_b.copy_(b1.view(L, 1).float())
                new.p_w.copy_(p_fold.float())
                new.p_b.copy_(c.view(-1, 1).float())
        for param in new.parameters():
            param.requires_grad_(False)
        return new.eval()

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch's SE-gated squeeze of pool(x), from which Φ and s are read."""
        return self.gated_squeeze(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.attend(self.pool(x))
        if self.form == "merged":
            # K = diag(s)·W0'/3 + P'·M·Q'   (B, C_out, C_in);   bias = P'·M·b1 + c
            pm = torch.matmul(self.p_w, m)
            kernel = s.unsqueeze(2) * self.w0 + torch.matmul(pm, self.q_w)
            bias = torch.matmul(pm, self.q_b) + self.p_b
            if self.in_hw is None:
                return channel_matmul(kernel, x) + bias.unsqueeze(3)
            h, w = self.in_hw
            out = torch.matmul(kernel, keep_batch_reshape(x, (self.c_in, h * w))) + bias
            return keep_batch_reshape(out, (self.c_out, h, w))
        r = self.conv(x)
        z = self.q(x)
        if self.out_hw is None:
            z = channel_matmul(m, z)
        elif self.channels_last:  # (B, HW, L)·Mᵀ on the channels-last map: no layout change in an NHWC runtime
            h, w = self.out_hw
            zt = keep_batch_reshape(z.permute(0, 2, 3, 1), (h * w, self.dim))
            z = keep_batch_reshape(torch.matmul(zt, m.transpose(1, 2)), (h, w, self.dim)).permute(0, 3, 1, 2)
        else:
            h, w = self.out_hw
            z = keep_batch_reshape(torch.matmul(m, keep_batch_reshape(z, (self.dim, h * w))), (self.dim, h, w))
        return self.p(z) + r * keep_batch_reshape(s, (self.c_out, 1, 1))


@register_family
class DcdConvFamily(LayerFamily):
    name = "dcd_conv"
    paper = "dcd"
    title = "DCD"
    folds_following_bn = True
    lowered_types = (LoweredDcdConv, GroupedDcdConv)

    def looks_dynamic(self, module: nn.Module) -> bool:
        has = lambda n: hasattr(module, n)
        return (has("fc_phi") or has("fc_scale") or (has("q") and has("p")) or (has("conv_q") and has("conv_p"))) and not (
            has("cls") or has("cls_q")
        )

    def match(self, module: nn.Module) -> DcdLayerInfo | Mismatch:
        f = self.name
        q_name = "q" if hasattr(module, "q") else "conv_q"
        p_name = "p" if hasattr(module, "p") else "conv_p"
        missing = [
            part for part in PARTS if not any(isinstance(getattr(module, n, None), nn.Module) for n in part.split("|"))
        ]
        if missing:
            names = [n.split("|")[0] for n in PARTS]
            return Mismatch(f, f"has {describe_parts(module, names)} but no {', '.join(m.replace('|', '/') for m in missing)}")
        convs = _match_convs(module, f, q_name, p_name)
        if isinstance(convs, Mismatch):
            return convs
        k, s, pad, dim = convs
        c_in, c_out = module.conv.in_channels, module.conv.out_channels
        if not is_foldable_bn(module.bn1, dim, 2):
            return Mismatch(f, f"bn1 is not a BatchNorm2d({dim}) with running statistics")
        if not is_foldable_bn(module.bn2, dim, 1):
            return Mismatch(f, f"bn2 is not a BatchNorm1d({dim}) with running statistics")
        pool = _pool_size(module.avg_pool)
        if pool is None:
            return Mismatch(f, f"avg_pool is {module.avg_pool!r}, expected AdaptiveAvgPool2d(1) or (2)")
        squeeze = match_attention(module, c_in * pool * pool, dim, c_out, f)
        if isinstance(squeeze, Mismatch):  # a Mismatch is falsy: test its type
            return squeeze
        kind = "DYModule" if q_name == "conv_q" else "conv_basic_dy" if pool == 2 else "conv_dy"
        return DcdLayerInfo(family=f, kind=kind, c_in=c_in, c_out=c_out, kernel=k, stride=s, padding=pad, latent=dim,
                            squeeze=squeeze, pool=pool, names={"q": q_name, "p": p_name})

    def forms(self, info: DcdLayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        forms = list(FORMS) if (info.kernel, info.stride) == (1, 1) else ["factored"]
        return forms + [GROUPED] if static_batch else forms

    def costs(self, info: DcdLayerInfo, in_shape: tuple[int, ...], target: str, static_batch: int | None = None,
              **cpu_constants: float) -> dict[str, float]:
        costs = form_costs(info, in_shape, target, **cpu_constants)
        return {**costs, GROUPED: grouped_cost(info, in_shape, target)} if static_batch else costs

    def lower(self, module: nn.Module, info: DcdLayerInfo, follow_bn: nn.Module | None,
              options: LowerOptions) -> nn.Module:
        if options.form != GROUPED:
            return LoweredDcdConv.from_layer(module, info, follow_bn, options)
        if options.static_batch is None or options.in_hw is None:
            raise ValueError("the grouped form needs a static batch and a static input size")
        factored = LoweredDcdConv.from_layer(module, info, follow_bn, dataclasses.replace(options, form="factored"))
        return GroupedDcdConv(factored, options.static_batch, info.kernel, info.stride, info.padding)

    def static_part(self, module: nn.Module, info: DcdLayerInfo) -> nn.Module:
        return module.conv
