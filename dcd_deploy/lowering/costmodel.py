"""Choose each DCD convolution's lowered form from its sizes (the forms are in ``dcd_conv``).

Both forms do the static convolution's C_out·C_in·HW multiply-accumulates; they differ in what
they add on top, counted per sample in MAC-equivalents:

* ``factored`` adds the Q conv, the L×L MatMul and the P conv, ``HW·(L·C_in + L² + C_out·L)``
  MACs, plus full passes over the C_out×H×W output that a static conv does not make: the
  per-channel Mul by s, the Add of the two branches and, on ONNX Runtime's CPU provider, the
  layout reorders around them (its blocked NCHWc convolutions cannot take a broadcast Mul).
  Each pass moves memory rather than doing arithmetic; ``PASS_COST`` converts one element of
  such a pass into MAC-equivalents.
* ``merged`` adds forming the per-sample kernel, ``C_out·L·(L + C_in) + 2·C_out·C_in`` MACs
  (a batch of small matrix products), and one pass over the output (its bias).

The factored form needs ``FACTORED_PASSES`` passes, the merged one ``MERGED_PASSES``; the
constants were fitted by timing both forms of every layer of the zoo networks with
``dcd-deploy export --tune`` on a 2-core x86 CPU (see BENCHMARKS.md). ``--tune`` measures instead
of estimating.
"""

from __future__ import annotations

from .base import LayerInfo

PASS_COST = 40.0
FACTORED_PASSES = 3.0
MERGED_PASSES = 1.0


def form_costs(info: LayerInfo, in_shape: tuple[int, ...]) -> dict[str, float]:
    """Estimated extra cost over the static convolution, per sample, in MAC-equivalents."""
    h, w = in_shape[2], in_shape[3]
    ho = (h + 2 * info.padding - info.kernel) // info.stride + 1
    wo = (w + 2 * info.padding - info.kernel) // info.stride + 1
    hw = ho * wo
    c_in, c_out, L = info.c_in, info.c_out, info.latent
    costs = {"factored": hw * (L * c_in + L * L + c_out * L) + FACTORED_PASSES * PASS_COST * hw * c_out}
    if (info.kernel, info.stride) == (1, 1):
        costs["merged"] = c_out * L * (L + c_in) + 2 * c_out * c_in + MERGED_PASSES * PASS_COST * hw * c_out
    return costs


def choose_form_by_cost(info: LayerInfo, in_shape: tuple[int, ...]) -> str:
    costs = form_costs(info, in_shape)
    return min(costs, key=costs.get)
