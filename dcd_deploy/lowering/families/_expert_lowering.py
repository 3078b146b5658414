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
  ``unfold`` = ``(K + KERNEL_COST)·E + UNFOLD_CONV_FACTOR·conv + UNFOLD_COST·C_in·k²·HW`` (the
  product is a batched MatMul, the unfolded map of C_in·k² values per pixel is written by a
  one-hot depthwise Conv and read back); ``loop`` = ``(K + KERNEL_COST)·E + LOOP_CONV_FACTOR·conv +
  LOOP_FIXED`` (a Conv whose weight is computed gets no pre-packed weights, and each Loop iteration
  has a fixed cost). The constants are fitted by ``benchmarks/fit_cost_model.py --families``
  (measured per distinct layer, see there and ``benchmarks/results/fit_cost_model_families_cpu.json``).
* CUDA, in microseconds per sample: kernel launches (4 µs each, per call, weighed at batch 16 or
  the export's batch) plus the bytes moved at ~2 TB/s (the unfold form writes and reads its unfolded
  map, C_in·k²·HW values) plus the arithmetic at ~50 TMAC/s (the experts form does K convolutions);
  the loop form pays two launches per sample, and is never chosen on CUDA
  (:attr:`ExpertMixingFamily.control_flow_forms`). These constants are a model, not a fit: no GPU
  has measured them yet (``benchmarks/gpu_check.sh``'s "fit" part records the per-form CUDA timings
  for one).

``--tune`` measures the forms instead.
"""

from __future__ import annotations

from torch import nn

from ..dynamic_forms import CONTROL_FLOW_FORMS, ExpertBank, LoweredDynamicConv, experts_ok
from ..family import LayerFamily, LayerInfo, LowerOptions


def available_forms(info_kernel: int, stride: int, padding: int, groups: int, has_spatial: bool) -> list[str]:
    """The forms that can compute a layer, cheapest-in-general first."""
    forms = []
    one_by_one = info_kernel == 1 and padding == 0 and groups == 1
    if one_by_one:
        forms.append("kernel")
    if experts_ok(info_kernel, has_spatial):
        forms.append("experts")
    if not one_by_one:  # (the kernel form is the unfold form of a 1×1 layer, with no unfolding)
        forms.append("unfold")
    forms.append("loop")
    return forms


# CPU constants, fitted on ONNX Runtime 1.32 CPU (2 threads, 224×224, batch 1 and 8, the four networks of
# benchmarks/dynamic_families.py) by `python benchmarks/fit_cost_model.py --families --json
# benchmarks/results/fit_cost_model_families_cpu.json` (re-scored with `--load` on that file): the least
# time lost over 112 measured (layer, batch) pairs, 6.3 % of the best choices' time (the constants before
# the fit lost 54 % with the unfold form added). The plateau is wide: see the file's "fit".
KERNEL_COST = 8.0  # writing and reading back one element of a per-sample kernel
PASS_COST = 16.0  # one element of an elementwise pass over a feature map
LOOP_CONV_FACTOR = 1.0  # a Conv whose weight is computed: no pre-packed weights
LOOP_FIXED = 1.0e6  # one Loop iteration (subgraph execution, a Conv set up for one sample's weight)
DEPTHWISE_FACTOR = 4.0  # a grouped conv runs far below the GEMM rate of a full one, per MAC
UNFOLD_CONV_FACTOR = 1.0  # the unfold form's batched MatMul, per MAC of the convolution
UNFOLD_COST = 4.0  # one element of the unfolded map (written by the one-hot Conv, read by the MatMul)
# CUDA constants: a model, not a fit (no GPU has timed the forms yet; gpu_check.sh's "fit" part does)
LAUNCH_US = 4.0  # one kernel launch (without CUDA graphs; far less with them)
BYTES_PER_US = 2e6  # ~2 TB/s of device memory
MACS_PER_US = 5e7  # ~50 TMAC/s: float32 convolutions and MatMuls with TF32 on a data-centre GPU
CUDA_BATCH = 16  # launches are per call: weighed per sample at this batch (or the export's, if larger)


class ExpertMixingFamily(LayerFamily):
    """What CondConv, DyConv and ODConv share: their forms, cost model and lowering.

    A subclass provides :meth:`lowering_parts`: the lowered attention module (returning
    :class:`Attentions`) and the :class:`ExpertBank` of one recognised layer.
    """

    lowered_types = (LoweredDynamicConv,)
    folds_following_bn = True
    control_flow_forms = CONTROL_FLOW_FORMS

    def lowering_parts(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None,
                       in_hw: tuple[int, int] | None) -> tuple[nn.Module, ExpertBank]:
        raise NotImplementedError

    def forms(self, info: LayerInfo, in_shape: tuple[int, ...], static_batch: int | None = None) -> list[str]:
        return available_forms(info.kernel, info.stride, info.padding, info.groups, "spatial" in info.attentions)

    def costs(self, info: LayerInfo, in_shape: tuple[int, ...], target: str, **constants: float) -> dict[str, float]:
        """Estimated cost per sample of each form: CPU in MAC-equivalents, CUDA in microseconds.
        ``constants`` override the module's constants by lower-case name (for fitting them, see :func:`form_costs`)."""
        forms = [f for f in self.forms(info, in_shape) if target != "cuda" or f not in self.control_flow_forms]
        return {form: cost for form, cost in form_costs(info, in_shape, target, **constants).items() if form in forms}

    def lower(self, module: nn.Module, info: LayerInfo, follow_bn: nn.Module | None,
              options: LowerOptions) -> nn.Module:
        attention, bank = self.lowering_parts(module, info, follow_bn, options.in_hw)
        return LoweredDynamicConv(attention, bank, options.form, options.in_hw)


def form_costs(info: LayerInfo, in_shape: tuple[int, ...], target: str, *, kernel_cost: float | None = None,
               pass_cost: float | None = None, loop_conv_factor: float | None = None, loop_fixed: float | None = None,
               depthwise_factor: float | None = None, unfold_conv_factor: float | None = None,
               unfold_cost: float | None = None, launch_us: float | None = None,
               bytes_per_us: float | None = None, macs_per_us: float | None = None) -> dict[str, float]:
    """Every form's cost (offered or not) per the module docstring; None takes the module's constant."""
    pick = lambda value, default: default if value is None else value
    k_sq, cin_g, K = info.kernel**2, info.c_in // info.groups, info.experts or 1
    hw = _out_pixels(info, in_shape)
    kernel_elems = info.c_out * cin_g * k_sq
    conv = kernel_elems * hw * (pick(depthwise_factor, DEPTHWISE_FACTOR) if info.groups > 1 else 1.0)
    out, unfolded = info.c_out * hw, info.c_in * k_sq * hw
    if target == "cuda":  # launches per call, plus per sample the bytes moved and the arithmetic
        launch, rate, macs = pick(launch_us, LAUNCH_US), pick(bytes_per_us, BYTES_PER_US), pick(macs_per_us, MACS_PER_US)
        batch = max(in_shape[0], CUDA_BATCH)
        forming_bytes, full_conv = 4 * (K + 2) * kernel_elems, kernel_elems * hw
        launches = {"kernel": 4, "experts": 3, "unfold": 5, "loop": 3 + 2 * batch}
        per_sample = {"kernel": forming_bytes / rate + (K * kernel_elems + full_conv) / macs,
                      "experts": 4 * (K + 1) * out / rate + K * full_conv / macs,
                      "unfold": (forming_bytes + 8 * unfolded) / rate + (K * kernel_elems + full_conv) / macs,
                      "loop": forming_bytes / rate + (K * kernel_elems + full_conv) / macs}
        return {form: launch * launches[form] / batch + per_sample[form] for form in launches}
    forming = (K + pick(kernel_cost, KERNEL_COST)) * kernel_elems
    pass_cost = pick(pass_cost, PASS_COST)
    return {"kernel": forming + conv + pass_cost * out,
            "experts": K * conv + (K + 1) * pass_cost * out,
            "unfold": forming + pick(unfold_conv_factor, UNFOLD_CONV_FACTOR) * conv + pick(unfold_cost, UNFOLD_COST) * unfolded,
            "loop": forming + pick(loop_conv_factor, LOOP_CONV_FACTOR) * conv + pick(loop_fixed, LOOP_FIXED)}


def _out_pixels(info: LayerInfo, in_shape: tuple[int, ...]) -> int:
    h, w = in_shape[2], in_shape[3]
    return ((h + 2 * info.padding - info.kernel) // info.stride + 1) * ((w + 2 * info.padding - info.kernel) // info.stride + 1)
