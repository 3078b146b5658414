"""Tolerance policy: how close ONNX Runtime's output must be to the reference's to pass.

Verdict (numpy ``allclose`` semantics, reference ``r``, ONNX Runtime output ``o``)::

    pass  ⇔  every value of o and r is finite  and  |o − r| ≤ atol + rtol·|r|  for every element

Default tolerances follow the precision the provider actually computes in::

    float32          rtol 1e-4   atol 1e-4 · max|r|
    float16, tf32    rtol 1e-2   atol 2e-2 · max|r|

``max|r|`` is the largest finite magnitude of that output over all samples, so atol follows the
scale of the logits. Measured on the trained sample models (their 16 sample inputs, CPU): float32
max|o − r| ≈ 1e-6·max|r|, float16 ≈ 2e-3·max|r|, so the defaults leave a margin of 10× or more.
Scaling one DCD layer's kernel of the w025 sample by 5% moves its logits by ≈ 5e-2·max|r|: 500×
the float32 tolerance, about 2× the float16 one, so loose tolerances only see larger changes; that
is the precision's limit (check the float32 export too). These are parity's own values, not tied
to the export self-check's threshold (a sanity check at export time). The precision is the file's
``dcd_deploy.precision`` metadata (else the dtype most of its float initializers have); a float32
file on CUDA counts as ``tf32`` while the provider's ``use_tf32`` option is on (ONNX Runtime's
default): TF32 rounds MatMul/Conv operands to float16's 10-bit mantissa. ``atol``/``rtol`` given
by the user replace the defaults (``atol`` is then absolute).

Noise-aware defaults (:mod:`dcd_deploy.runtime.float64`): against the original evaluated in
float64, each default factor is raised to allow 10× the original's own float32 error ``noise`` on
that output, ``rtol = noise_allowance(rtol₀, noise)`` and ``atol = noise_allowance(atol₀, noise) ·
max|r|`` (float32: both 1e-4; float16/tf32 keep their looser defaults as the floor). Given
``atol``/``rtol`` are used as given.
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import InputError
from ..runtime.float64 import noise_allowance

# Default (rtol, atol factor of max|ref|) per computing precision (see the module docstring).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 2e-2),
    "tf32": (1e-2, 2e-2),
}
_OFF = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|o − r| ≤ atol + rtol·|r|``; ``atol=None`` means ``atol_scale · max|r|``."""

    rtol: float
    atol: float | None = None
    atol_scale: float | None = None
    source: str = "default"  # 'default' | 'given'
    noise: float | None = None  # default tolerance: the original's float32 error against float64 it allows

    def absolute_atol(self, ref_scale: float) -> float:
        if self.atol is not None:
            return self.atol
        return (self.atol_scale or 0.0) * ref_scale

    def rule(self) -> str:
        atol = f"{self.atol:.1e}" if self.atol is not None else f"{self.atol_scale:.0e}·max|ref|"
        return f"{atol} + {self.rtol:.1e}·|ref|"

    def to_dict(self) -> dict[str, object]:
        return {"rtol": self.rtol, "atol": self.atol, "atol_scale": self.atol_scale, "source": self.source,
                "rule": self.rule(), "original_float32_error": self.noise}


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """Raise :class:`InputError` for a given tolerance that is negative or not finite."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise InputError(f"--{name} {value} is not a tolerance.", f"Give a finite number >= 0, e.g. --{name} 1e-3.")


def default_tolerance(precision: str, atol: float | None = None, rtol: float | None = None,
                      noise: float | None = None) -> Tolerance:
    """The default tolerance for ``precision``, raised to allow ``noise`` (the original's own float32
    error against float64, see the module docstring), with user overrides applied."""
    check_tolerances(atol, rtol)
    d_rtol, d_scale = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["float32"])
    given = atol is not None or rtol is not None
    if given:  # the user's tolerance, as given (a missing half keeps its fixed default)
        return Tolerance(rtol=d_rtol if rtol is None else rtol, atol=atol,
                         atol_scale=None if atol is not None else d_scale, source="given")
    return Tolerance(rtol=noise_allowance(d_rtol, noise), atol_scale=noise_allowance(d_scale, noise), noise=noise)


def relative_threshold(precision: str) -> float:
    """The default atol factor of ``precision``: the relative error that counts as a divergence."""
    return DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["float32"])[1]


def compute_precision(precision: str, provider: str, options: dict[str, str]) -> tuple[str, str | None]:
    """The precision ``provider`` computes a ``precision`` model in, and why when it differs."""
    if precision == "float16":
        return "float16", None
    if provider == "CUDAExecutionProvider":
        if "use_tf32" not in options:  # onnxruntime < 1.18: cuDNN's default math may use TF32 on Ampere and newer
            return "tf32", "this onnxruntime cannot turn TF32 off; cuDNN may use it on Ampere and newer GPUs"
        if str(options["use_tf32"]).lower() not in _OFF:
            return "tf32", ("CUDA runs float32 Conv/MatMul in TF32 (use_tf32=1, ONNX Runtime's default); "
                            "pass --provider-option cuda:use_tf32=0 to check full float32")
    if provider == "TensorrtExecutionProvider":
        if str(options.get("trt_fp16_enable", "0")).lower() not in _OFF:
            return "float16", "TensorRT builds float16 engines (trt_fp16_enable=1)"
        return "tf32", "TensorRT allows TF32 kernels by default"
    return precision, None
