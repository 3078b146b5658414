"""Reference implementations of published dynamic convolutions, and networks built from them.

Written from the papers' maths with the public projects' parameter names and tensor layouts, so
that checkpoints of these networks have the same state-dict keys and shapes as the public code,
and each layer's ``forward`` is the public one: a per-sample kernel and one grouped convolution
with ``groups = batch × groups`` (exactly what ONNX cannot express with a dynamic batch).

Layers (eval-mode maths):

* :class:`CondConv2d` (CondConv, Yang et al. 2019; timm's layout): ``weight`` is
  ``[K, C_out·C_in/g·k·k]``, ``bias`` ``[K, C_out]``; ``forward(x, routing_weights)`` with
  ``W_n = Σ_k r_nk W_k``. The routing ``r = sigmoid(routing_fn(avgpool(x)))`` is computed by the
  block (:class:`CondConvResidual`) and shared by its ``conv_pw``, ``conv_dw`` and ``conv_pwl``.
* :class:`Dynamic_conv2d` (DyConv, Chen et al. 2020; layout of the widely copied PyTorch
  implementation): ``weight`` ``[K, C_out, C_in/g, k, k]``, ``bias`` ``[K, C_out]``,
  ``attention = attention2d(avgpool, fc1 (1×1 conv, no bias), relu, fc2 (1×1 conv, bias))`` and
  ``π = softmax(fc2(...) / temperature)``; ``temperature`` is a plain attribute (annealed 34 → 1).
* :class:`ODConv2d` (ODConv, Li et al. 2022; layout of the authors' code): ``weight``
  ``[K, C_out, C_in/g, k, k]`` and ``attention = Attention(avgpool, fc, bn, relu, channel_fc,
  filter_fc, spatial_fc, kernel_fc)``; filter, spatial and kernel attentions are skipped (``1.0``)
  for depthwise, 1×1 and K = 1 layers respectively, and a 1×1 layer with K = 1 is a plain conv.

Networks (factories for ``dcd-deploy --model sample_models.dynamic_nets:FACTORY``):
``efficientnet_cc`` (CondConv blocks in the last three stages, as timm's efficientnet_cc_b0),
``od_resnet18`` / ``od_resnet`` and ``od_mobilenetv2`` (ODConv), ``dy_resnet18`` / ``dy_resnet``
(DyConv). Each takes ``num_classes`` and a width option; the defaults are the ImageNet-sized
networks, small widths give the digits sample models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never below 90 % of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# ---------------------------------------------------------------------------------------------
# CondConv (timm layout)
# ---------------------------------------------------------------------------------------------


class CondConv2d(nn.Module):
    """Conditionally parameterised convolution; the routing weights come in as a second argument."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, bias: bool = False,
                 num_experts: int = 4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        pad = ((stride - 1) + dilation * (self.kernel_size[0] - 1)) // 2 if padding is None else padding
        self.padding = _pair(pad)
        self.dynamic_padding = False  # timm: True only for TF "same" padding
        self.groups = groups
        self.num_experts = num_experts
        self.weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.weight_shape)))
        if bias:
            self.bias_shape = (out_channels,)
            self.bias = nn.Parameter(torch.empty(num_experts, out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = math.prod(self.weight_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        for k in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight.data[k].view(self.weight_shape), a=math.sqrt(5))
            if self.bias is not None:
                nn.init.uniform_(self.bias.data[k], -bound, bound)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weight = torch.matmul(routing_weights, self.weight)
        weight = weight.view((b * self.out_channels, self.in_channels // self.groups) + self.kernel_size)
        bias = None
        if self.bias is not None:
            bias = torch.matmul(routing_weights, self.bias).view(b * self.out_channels)
        x = x.reshape(1, b * c, h, w)
        out = F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding, dilation=self.dilation,
                       groups=self.groups * b)
        return out.permute([1, 0, 2, 3]).view(b, self.out_channels, out.shape[-2], out.shape[-1])


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an activation in one module (timm's ``BatchNormAct2d``)."""

    def __init__(self, num_features: int, act_layer: type[nn.Module] | None = nn.SiLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite: conv_reduce, act1, conv_expand, sigmoid gate."""

    def __init__(self, in_chs: int, rd_channels: int, act_layer: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = act_layer()
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class DepthwiseSeparableConv(nn.Module):
    """timm's ``ds`` block: conv_dw, bn1 (act), se, conv_pw, bn2."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, se_chs: int):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel, stride, kernel // 2, groups=in_chs, bias=False)
        self.bn1 = BatchNormAct2d(in_chs)
        self.se = SqueezeExcite(in_chs, se_chs) if se_chs else nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = BatchNormAct2d(out_chs, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """timm's ``ir`` block; with ``num_experts > 0`` its three convolutions are CondConv2d."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, exp_ratio: float, se_chs: int,
                 num_experts: int = 0):
        super().__init__()
        mid = make_divisible(in_chs * exp_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        conv = (lambda *a, **k: CondConv2d(*a, num_experts=num_experts, **k)) if num_experts else \
            (lambda *a, **k: nn.Conv2d(*a, bias=False, **k))
        self.conv_pw = conv(in_chs, mid, 1)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = conv(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid)
        self.bn2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, se_chs) if se_chs else nn.Identity()
        self.conv_pwl = conv(mid, out_chs, 1)
        self.bn3 = BatchNormAct2d(out_chs, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.has_skip else y


class CondConvResidual(InvertedResidual):
    """An inverted residual whose convolutions share one routing: sigmoid(routing_fn(avgpool(x)))."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, exp_ratio: float, se_chs: int,
                 num_experts: int = 4):
        super().__init__(in_chs, out_chs, kernel, stride, exp_ratio, se_chs, num_experts=num_experts)
        self.num_experts = num_experts
        self.routing_fn = nn.Linear(in_chs, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing_weights = torch.sigmoid(self.routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        y = self.bn1(self.conv_pw(x, routing_weights))
        y = self.bn2(self.conv_dw(y, routing_weights))
        y = self.bn3(self.conv_pwl(self.se(y), routing_weights))
        return y + x if self.has_skip else y


# (block type, repeats, kernel, stride, expansion, channels, CondConv) of EfficientNet-B0;
# efficientnet_cc_b0 makes the last three stages CondConv.
EFFICIENTNET_B0_STAGES = (
    ("ds", 1, 3, 1, 1, 16, False), ("ir", 2, 3, 2, 6, 24, False), ("ir", 2, 5, 2, 6, 40, False),
    ("ir", 3, 3, 2, 6, 80, False), ("ir", 3, 5, 1, 6, 112, True), ("ir", 4, 5, 2, 6, 192, True),
    ("ir", 1, 3, 1, 6, 320, True),
)


class EfficientNetCC(nn.Module):
    """EfficientNet with CondConv blocks (timm's ``efficientnet_cc_*`` names: conv_stem, bn1, blocks, ...)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, depth_mult: float = 1.0,
                 num_experts: int = 4, drop_rate: float = 0.2, in_chans: int = 3, num_features: int = 1280):
        super().__init__()
        stem = make_divisible(32 * width_mult)
        self.conv_stem = nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(stem)
        stages, chs = [], stem
        for kind, repeats, kernel, stride, exp, out, cc in EFFICIENTNET_B0_STAGES:
            out = make_divisible(out * width_mult)
            blocks = []
            for i in range(int(math.ceil(repeats * depth_mult))):
                s, se = (stride if i == 0 else 1), max(1, int(chs * 0.25))
                if kind == "ds":
                    blocks.append(DepthwiseSeparableConv(chs, out, kernel, s, se))
                elif cc and num_experts:
                    blocks.append(CondConvResidual(chs, out, kernel, s, exp, se, num_experts))
                else:
                    blocks.append(InvertedResidual(chs, out, kernel, s, exp, se))
                chs = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = make_divisible(num_features * width_mult)
        self.conv_head = nn.Conv2d(chs, self.num_features, 1, bias=False)
        self.bn2 = BatchNormAct2d(self.num_features)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop_rate = drop_rate
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        x = self.global_pool(x).flatten(1)
        return self.classifier(F.dropout(x, self.drop_rate, self.training))


def efficientnet_cc(num_classes: int = 1000, width_mult: float = 1.0, depth_mult: float = 1.0,
                    num_experts: int = 4, drop_rate: float = 0.2, num_features: int = 1280) -> EfficientNetCC:
    """efficientnet_cc_b0_4e at the defaults (24 CondConv2d layers in 8 blocks, 4 experts)."""
    return EfficientNetCC(num_classes, width_mult, depth_mult, num_experts, drop_rate, num_features=num_features)


# ---------------------------------------------------------------------------------------------
# DyConv (attention over K kernels)
# ---------------------------------------------------------------------------------------------


class attention2d(nn.Module):
    """π = softmax(fc2(relu(fc1(avgpool(x)))) / temperature) over K kernels."""

    def __init__(self, in_planes: int, ratios: float, K: int, temperature: float):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden_planes = int(in_planes * ratios) + 1 if in_planes != 3 else K
        self.fc1 = nn.Conv2d(in_planes, hidden_planes, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden_planes, K, 1, bias=True)
        self.temperature = temperature

    def update_temperature(self) -> None:
        if self.temperature != 1:
            self.temperature -= 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.relu(self.fc1(self.avgpool(x)))).view(x.size(0), -1)
        return F.softmax(x / self.temperature, 1)


class Dynamic_conv2d(nn.Module):
    """DyConv: W(x) = Σ_k π_k(x) W_k, b(x) = Σ_k π_k(x) b_k, one grouped conv over the batch."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, ratio: float = 0.25, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True, K: int = 4,
                 temperature: float = 34):
        super().__init__()
        assert in_planes % groups == 0
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups, self.K = dilation, groups, K
        self.attention = attention2d(in_planes, ratio, K, temperature)
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(K, out_planes)) if bias else None
        for i in range(K):
            nn.init.kaiming_uniform_(self.weight.data[i])

    def update_temperature(self) -> None:
        self.attention.update_temperature()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        softmax_attention = self.attention(x)
        batch_size, _, height, width = x.size()
        x = x.view(1, -1, height, width)
        weight = self.weight.view(self.K, -1)
        aggregate_weight = torch.mm(softmax_attention, weight).view(
            -1, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        aggregate_bias = torch.mm(softmax_attention, self.bias).view(-1) if self.bias is not None else None
        output = F.conv2d(x, weight=aggregate_weight, bias=aggregate_bias, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups * batch_size)
        return output.view(batch_size, self.out_planes, output.size(-2), output.size(-1))


# ---------------------------------------------------------------------------------------------
# ODConv (four attentions from one squeeze)
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """ODConv's attentions: channel, filter, spatial and kernel (each skipped where it is trivial)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, groups: int = 1,
                 reduction: float = 0.0625, kernel_num: int = 4, min_channel: int = 16):
        super().__init__()
        attention_channel = max(int(in_planes * reduction), min_channel)
        self.kernel_size, self.kernel_num = kernel_size, kernel_num
        self.temperature = 1.0
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_planes, attention_channel, 1, bias=False)
        self.bn = nn.BatchNorm2d(attention_channel)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(attention_channel, in_planes, 1, bias=True)
        self.func_channel = self.get_channel_attention
        if in_planes == groups and in_planes == out_planes:  # depthwise
            self.func_filter = self.skip
        else:
            self.filter_fc = nn.Conv2d(attention_channel, out_planes, 1, bias=True)
            self.func_filter = self.get_filter_attention
        if kernel_size == 1:  # pointwise
            self.func_spatial = self.skip
        else:
            self.spatial_fc = nn.Conv2d(attention_channel, kernel_size * kernel_size, 1, bias=True)
            self.func_spatial = self.get_spatial_attention
        if kernel_num == 1:
            self.func_kernel = self.skip
        else:
            self.kernel_fc = nn.Conv2d(attention_channel, kernel_num, 1, bias=True)
            self.func_kernel = self.get_kernel_attention
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def update_temperature(self, temperature: float) -> None:
        self.temperature = temperature

    @staticmethod
    def skip(_: torch.Tensor) -> float:
        return 1.0

    def get_channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.channel_fc(x).view(x.size(0), -1, 1, 1) / self.temperature)

    def get_filter_attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.filter_fc(x).view(x.size(0), -1, 1, 1) / self.temperature)

    def get_spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spatial_fc(x).view(x.size(0), 1, 1, 1, self.kernel_size, self.kernel_size)
        return torch.sigmoid(s / self.temperature)

    def get_kernel_attention(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_fc(x).view(x.size(0), -1, 1, 1, 1, 1)
        return F.softmax(k / self.temperature, dim=1)

    def forward(self, x: torch.Tensor):
        x = self.relu(self.bn(self.fc(self.avgpool(x))))
        return self.func_channel(x), self.func_filter(x), self.func_spatial(x), self.func_kernel(x)


class ODConv2d(nn.Module):
    """ODConv: y = α_f ⊙ (Σ_k α_k (α_s ⊙ W_k)) ∗ (α_c ⊙ x), one grouped conv over the batch."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, reduction: float = 0.0625, kernel_num: int = 4):
        super().__init__()
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups, self.kernel_num = dilation, groups, kernel_num
        self.attention = Attention(in_planes, out_planes, kernel_size, groups=groups, reduction=reduction,
                                   kernel_num=kernel_num)
        self.weight = nn.Parameter(torch.randn(kernel_num, out_planes, in_planes // groups, kernel_size, kernel_size))
        for i in range(kernel_num):
            nn.init.kaiming_normal_(self.weight[i], mode="fan_out", nonlinearity="relu")
        if kernel_size == 1 and kernel_num == 1:
            self._forward_impl = self._forward_impl_pw1x
        else:
            self._forward_impl = self._forward_impl_common

    def update_temperature(self, temperature: float) -> None:
        self.attention.update_temperature(temperature)

    def _forward_impl_common(self, x: torch.Tensor) -> torch.Tensor:
        channel_attention, filter_attention, spatial_attention, kernel_attention = self.attention(x)
        batch_size, _, height, width = x.size()
        x = (x * channel_attention).reshape(1, -1, height, width)
        aggregate_weight = spatial_attention * kernel_attention * self.weight.unsqueeze(dim=0)
        aggregate_weight = torch.sum(aggregate_weight, dim=1).view(
            [-1, self.in_planes // self.groups, self.kernel_size, self.kernel_size])
        output = F.conv2d(x, weight=aggregate_weight, bias=None, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=self.groups * batch_size)
        output = output.view(batch_size, self.out_planes, output.size(-2), output.size(-1))
        return output * filter_attention

    def _forward_impl_pw1x(self, x: torch.Tensor) -> torch.Tensor:
        channel_attention, filter_attention, _, _ = self.attention(x)
        output = F.conv2d(x * channel_attention, weight=self.weight.squeeze(dim=0), bias=None, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups)
        return output * filter_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_impl(x)


# ---------------------------------------------------------------------------------------------
# ResNets (ODConv / DyConv in every BasicBlock 3×3; stem, downsample and fc static)
# ---------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, conv3x3):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class DynamicResNet(nn.Module):
    """torchvision-style ResNet (conv1, bn1, relu, maxpool, layer1..4, avgpool, dropout, fc)."""

    def __init__(self, conv3x3, layers=(2, 2, 2, 2), num_classes: int = 1000, width: int = 64,
                 dropout: float = 0.1):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(conv3x3, width * 2 ** i, blocks, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, conv3x3, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, conv3x3)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, None, conv3x3) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def update_temperature(self, temperature: float | None = None) -> None:
        """Set ODConv temperatures to ``temperature``; step DyConv temperatures down (34, 31, .., 1)."""
        for m in self.modules():
            if isinstance(m, ODConv2d) and temperature is not None:
                m.update_temperature(temperature)
            elif isinstance(m, Dynamic_conv2d):
                m.update_temperature()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


def od_resnet(layers=(2, 2, 2, 2), num_classes: int = 1000, width: int = 64, kernel_num: int = 4,
              reduction: float = 0.0625, dropout: float = 0.1) -> DynamicResNet:
    """ResNet whose BasicBlock 3×3 convolutions are ODConv2d."""
    def conv3x3(cin: int, cout: int, stride: int) -> ODConv2d:
        return ODConv2d(cin, cout, 3, stride, 1, reduction=reduction, kernel_num=kernel_num)
    return DynamicResNet(conv3x3, tuple(layers), num_classes, width, dropout)


def od_resnet18(num_classes: int = 1000, width: int = 64, kernel_num: int = 4, reduction: float = 0.0625,
                dropout: float = 0.1) -> DynamicResNet:
    return od_resnet((2, 2, 2, 2), num_classes, width, kernel_num, reduction, dropout)


def dy_resnet(layers=(2, 2, 2, 2), num_classes: int = 1000, width: int = 64, K: int = 4,
              ratio: float = 0.25, temperature: float = 34, bias: bool = False, dropout: float = 0.0) -> DynamicResNet:
    """ResNet whose BasicBlock 3×3 convolutions are Dynamic_conv2d (DyConv)."""
    def conv3x3(cin: int, cout: int, stride: int) -> Dynamic_conv2d:
        return Dynamic_conv2d(cin, cout, 3, ratio=ratio, stride=stride, padding=1, bias=bias, K=K,
                              temperature=temperature)
    return DynamicResNet(conv3x3, tuple(layers), num_classes, width, dropout)


def dy_resnet18(num_classes: int = 1000, width: int = 64, K: int = 4, ratio: float = 0.25,
                temperature: float = 34, bias: bool = False, dropout: float = 0.0) -> DynamicResNet:
    return dy_resnet((2, 2, 2, 2), num_classes, width, K, ratio, temperature, bias, dropout)


# ---------------------------------------------------------------------------------------------
# ODConv MobileNetV2
# ---------------------------------------------------------------------------------------------


class MobileNetV2ODConvBNReLU(nn.Sequential):
    """ODConv2d, BatchNorm2d, ReLU6 (indices 0, 1, 2 as in the public ODConvBNReLU)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 reduction: float = 0.0625, kernel_num: int = 4):
        super().__init__(ODConv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                                  reduction=reduction, kernel_num=kernel_num),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    def update_temperature(self, temperature: float) -> None:
        self[0].update_temperature(temperature)


class ODInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, reduction: float, kernel_num: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(MobileNetV2ODConvBNReLU(inp, hidden, 1, reduction=reduction, kernel_num=kernel_num))
        layers += [MobileNetV2ODConvBNReLU(hidden, hidden, 3, stride, groups=hidden, reduction=reduction,
                                           kernel_num=kernel_num),
                   ODConv2d(hidden, oup, 1, 1, 0, reduction=reduction, kernel_num=kernel_num),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


MOBILENETV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))


class ODMobileNetV2(nn.Module):
    """MobileNetV2 whose block convolutions (and last 1×1) are ODConv2d; stem and classifier static."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, kernel_num: int = 4,
                 reduction: float = 0.0625, last_channel: int = 1280, dropout: float = 0.2):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(last_channel * max(1.0, width_mult))
        features: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin),
                                                   nn.ReLU6(inplace=True))]
        for t, c, n, s in MOBILENETV2_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(ODInvertedResidual(cin, cout, s if i == 0 else 1, t, reduction, kernel_num))
                cin = cout
        features.append(MobileNetV2ODConvBNReLU(cin, self.last_channel, 1, reduction=reduction, kernel_num=kernel_num))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

    def update_temperature(self, temperature: float) -> None:
        for m in self.modules():
            if isinstance(m, ODConv2d):
                m.update_temperature(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def od_mobilenetv2(num_classes: int = 1000, width_mult: float = 1.0, kernel_num: int = 4,
                   reduction: float = 0.0625, last_channel: int = 1280, dropout: float = 0.2) -> ODMobileNetV2:
    """ODConv MobileNetV2 (4 kernels by default)."""
    return ODMobileNetV2(num_classes, width_mult, kernel_num, reduction, last_channel, dropout)


FACTORIES = {
    "efficientnet_cc": efficientnet_cc, "od_resnet18": od_resnet18, "od_resnet": od_resnet,
    "od_mobilenetv2": od_mobilenetv2, "dy_resnet18": dy_resnet18, "dy_resnet": dy_resnet,
}
