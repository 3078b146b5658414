"""Choose each DCD convolution's lowered form from its sizes, per target (the forms are in ``dcd_conv``).

Both forms do the static convolution's work; they differ in what they add on top.

**CPU** (``target="cpu"``), counted per sample in MAC-equivalents:

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

**CUDA** (``target="cuda"``), in microseconds: a GPU runs a batch-1 DCD layer far below its
arithmetic rate, so the cost is the kernels launched (``CUDA_LAUNCH_US`` each: the factored form
launches the Q conv, the MatMul, the P conv and the Mul/Add tail, the merged form the five small
products and sums that form its kernel, the batched MatMul and its bias) plus the extra bytes
moved at ``CUDA_BYTES_PER_US``, plus arithmetic at ``CUDA_MACS_PER_US``. CUDA graphs shrink the
launch term.

``--tune`` measures on the target's ONNX Runtime provider instead of estimating.
"""

from __future__ import annotations

from .base import LayerInfo

TARGETS = ("cpu", "cuda")

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


def form_costs(info: LayerInfo, in_shape: tuple[int, ...], target: str = "cpu", **cpu_constants: float) -> dict[str, float]:
    """Estimated extra cost over the static convolution, per sample: MAC-equivalents on ``cpu``,
    microseconds on ``cuda``. Keys are the forms the layer allows. ``cpu_constants`` override the
    CPU model's (``kernel_cost``, ``pass_difference``, ``factored_fixed``; see :func:`cpu_costs`)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
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


def cost_chooser(target: str = "cpu", **cpu_constants: float):
    """A form chooser ``(info, in_shape) -> form`` for ``lower_model`` using this target's costs
    (``cpu_constants``: other constants for the CPU model, see :func:`cpu_costs`)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")

    def choose(info: LayerInfo, in_shape: tuple[int, ...]) -> str:
        costs = form_costs(info, in_shape, target, **cpu_constants)
        return min(costs, key=costs.get)

    choose.target = target  # type: ignore[attr-defined]
    return choose


def choose_form_by_cost(info: LayerInfo, in_shape: tuple[int, ...], target: str = "cpu") -> str:
    return cost_chooser(target)(info, in_shape)
