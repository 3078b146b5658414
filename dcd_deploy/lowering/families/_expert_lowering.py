"""What CondConv, DyConv and ODConv share as families: their forms, cost model and lowering.

A family subclasses :class:`ExpertMixingFamily` and provides ``lowering_parts``: the lowered
attention module and the :class:`~dcd_deploy.lowering.dynamic_forms.ExpertBank` of one layer.
The forms themselves (``kernel``, ``experts``, ``loop``) are in ``dynamic_forms``.

Cost model, per sample, for a layer with kernel-element count ``E = C_out·C_in/g·k²``, ``HW``
output pixels and K experts; ``conv = E·HW`` MACs (times ``DEPTHWISE_FACTOR`` for grouped
convolutions, which run far below a full convolution's GEMM rate):

* CPU, in MAC-equivalents: ``kernel`` = ``(K + KERNEL_COST)·E + conv + PASS_COST·C_out·HW`` (form
  the kernel, write and read it back, the product, the bias pass); ``experts`` =
  ``K·conv + (K + 1)·PASS_COST·C_out·HW`` (K× the arithmetic, the mixing reads K maps);
  ``loop`` = ``(K + KERNEL_COST)·E + LOOP_CONV_FACTOR·conv + LOOP_FIXED`` (a Conv whose weight is
  computed gets no pre-packed weights, and each Loop iteration has a fixed cost).
* CUDA, in microseconds: kernel launches (4 µs each) plus the extra bytes at ~2 TB/s; the loop
  form pays a launch per sample.

``--tune`` measures the forms instead.
"""

from __future__ import annotations

from torch import nn

from ..dynamic_forms import ExpertBank, LoweredDynamicConv, experts_ok
from ..family import LayerFamily, LayerInfo, LowerOptions


def available_forms(info_kernel: int, stride: int, padding: int, groups: int, has_spatial: bool) -> list[str]:
    """The forms that can compute a layer, cheapest-in-general first."""
    forms = []
    if info_kernel == 1 and padding == 0 and groups == 1:
        forms.append("kernel")
    if experts_ok(info_kernel, has_spatial):
        forms.append("experts")
    forms.append("loop")
    return forms


KERNEL_COST = 4.0  # writing and reading back one element of a per-sample kernel
PASS_COST = 2.0  # one element of an elementwise pass over a feature map
LOOP_CONV_FACTOR = 1.5  # a Conv whose weight is computed: no pre-packed weights
LOOP_FIXED = 3.0e4  # one Loop iteration (subgraph execution)
DEPTHWISE_FACTOR = 4.0  # a grouped conv runs far below the GEMM rate of a full one, per MAC


class ExpertMixingFamily(LayerFamily):
    """What CondConv, DyConv and ODConv share: their forms, cost model and lowering.

    A subclass provides :meth:`lowering_parts`: the lowered attention module (returning
    :class:`Attentions`) and the :class:`ExpertBank` of one recognised layer.
    """

    lowered_types = (LoweredDynamicConv,)
    folds_following_bn = True

    def lowering_parts(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None,
                       in_hw: tuple[int, int] | None) -> tuple[nn.Module, ExpertBank]:
        raise NotImplementedError

    def forms(self, info: LayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        return available_forms(info.kernel, info.stride, info.padding, info.groups, "spatial" in info.attentions)

    def costs(self, info: LayerInfo, in_shape: tuple[int, ...], target: str) -> dict[str, float]:
        """Estimated cost per sample of each form: CPU in MAC-equivalents, CUDA in microseconds."""
        k_sq, cin_g, K = info.kernel**2, info.c_in // info.groups, info.experts or 1
        hw = _out_pixels(info, in_shape)
        kernel_elems = info.c_out * cin_g * k_sq
        conv = kernel_elems * hw * (DEPTHWISE_FACTOR if info.groups > 1 else 1.0)
        out = info.c_out * hw
        if target == "cuda":  # launches (4 µs each) + bytes moved at ~2 TB/s; arithmetic is not the limit
            costs = {"kernel": 16.0 + 4 * (K + 2) * kernel_elems / 2e6, "experts": 12.0 + 4 * (K + 1) * out / 2e6,
                     "loop": 12.0 + 8.0 * max(1, in_shape[0]) + 4 * (K + 2) * kernel_elems / 2e6}
        else:
            forming = (K + KERNEL_COST) * kernel_elems
            costs = {"kernel": forming + conv + PASS_COST * out,
                     "experts": K * conv + (K + 1) * PASS_COST * out,
                     "loop": forming + LOOP_CONV_FACTOR * conv + LOOP_FIXED}
        return {form: costs[form] for form in self.forms(info, in_shape)}

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None,
              options: LowerOptions) -> nn.Module:
        attention, bank = self.lowering_parts(module, info, follow_bn, options.in_hw)
        return LoweredDynamicConv(attention, bank, options.form, options.in_hw)


def _out_pixels(info: LayerInfo, in_shape: tuple[int, ...]) -> int:
    h, w = in_shape[2], in_shape[3]
    return ((h + 2 * info.padding - info.kernel) // info.stride + 1) * ((w + 2 * info.padding - info.kernel) // info.stride + 1)
