"""Metrics of one output of one provider against the reference, and the verdict they give.

Per provider and output: max and mean absolute error; max relative error
``|o − r| / max(|r|, 1e-3 · max|r|)`` (the floor keeps it finite and meaningful where the
reference is zero or tiny; when the whole reference is zero the floor is 1, i.e. the absolute
error); the minimum over samples of the cosine similarity; top-1 agreement and top-5 overlap of
2-D outputs (logits); NaN/Inf counts; and the smallest tolerance that would have passed: the
smallest atol at the chosen rtol, and the smallest rtol at the chosen atol (``None`` when none
would: a non-finite value, or an error above atol where the reference is exactly zero).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..reporting import json_safe
from .tolerance import Tolerance

REL_FLOOR = 1e-3
TOPK = 5


@dataclasses.dataclass
class OutputComparison:
    """One output of one provider against the reference."""

    name: str
    shape: tuple[int, ...]
    atol: float
    rtol: float
    tolerance_rule: str
    ref_scale: float
    max_abs_error: float | None
    mean_abs_error: float | None
    max_rel_error: float | None
    cosine_min: float | None
    top1_agreement: float | None
    top5_overlap: float | None
    topk: int | None
    nan: int
    inf: int
    ref_nan: int
    ref_inf: int
    violations: int
    min_atol: float | None
    min_rtol: float | None
    worst: dict[str, Any] | None
    samples: int
    noise: float | None = None  # the original's own float32 error against float64 (default tolerance only)

    @property
    def relative_error(self) -> float | None:
        """``max|o − r| / max|r|`` (the self-check's measure; the absolute error when r is all zero)."""
        if self.max_abs_error is None:
            return None
        return self.max_abs_error / self.ref_scale if self.ref_scale > 0 else self.max_abs_error

    def allowance(self) -> str | None:
        """With a noise-aware default tolerance: the file's and the original's float32 error, and what is allowed."""
        if self.noise is None or self.relative_error is None:
            return None
        allowed = self.atol / self.ref_scale if self.ref_scale > 0 else self.atol
        return (f"relative to max|ref|: file {self.relative_error:.1e}, original float32 {self.noise:.1e}, "
                f"allowed {allowed:.1e}")

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0 and self.ref_nan == 0 and self.ref_inf == 0

    @property
    def passed(self) -> bool:
        return self.finite and self.violations == 0

    def __bool__(self) -> bool:
        return self.passed

    def reason(self) -> str | None:
        if self.ref_nan or self.ref_inf:
            return (f"the reference (PyTorch) output holds {self.ref_nan} NaN and {self.ref_inf} Inf values, "
                    "so the trained model itself is broken on these inputs")
        if self.nan or self.inf:
            return f"ONNX Runtime produced {self.nan} NaN and {self.inf} Inf values"
        if self.violations:
            total = int(np.prod(self.shape))
            text = f"{self.violations} of {total} values exceed {self.tolerance_rule} (atol {self.atol:.2e})"
            if self.worst:
                text += (f"; worst at sample {self.worst['sample']}, index {self.worst['index']}: "
                         f"{self.worst['actual']:.6g} vs reference {self.worst['reference']:.6g}")
            return text
        return None

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "name": self.name, "shape": list(self.shape), "passed": self.passed, "reason": self.reason(),
            "tolerance": {"atol": self.atol, "rtol": self.rtol, "rule": self.tolerance_rule, "ref_max_abs": self.ref_scale,
                          "original_float32_error": self.noise},
            "relative_error": self.relative_error, "max_abs_error": self.max_abs_error, "mean_abs_error": self.mean_abs_error,
            "max_rel_error": self.max_rel_error, "cosine_similarity_min": self.cosine_min,
            "top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap, "topk": self.topk,
            "nan": self.nan, "inf": self.inf, "reference_nan": self.ref_nan, "reference_inf": self.ref_inf,
            "violations": self.violations, "smallest_passing_atol": self.min_atol,
            "smallest_passing_rtol": self.min_rtol, "worst": self.worst,
        })


def _smallest_passing(diff: np.ndarray, abs_ref: np.ndarray, atol: float, rtol: float) -> tuple[float, float | None]:
    """The smallest atol that passes at ``rtol``, and the smallest rtol that passes at ``atol``."""
    min_atol = max(0.0, float((diff - rtol * abs_ref).max()))
    need = diff > atol
    if not need.any():
        return min_atol, 0.0
    if (abs_ref[need] == 0).any():
        return min_atol, None
    return min_atol, float(((diff[need] - atol) / abs_ref[need]).max())


def _worst(ref: np.ndarray, out: np.ndarray, both: np.ndarray, excess: np.ndarray) -> dict[str, Any]:
    """The first non-finite element, else the one furthest over its allowance."""
    bad = np.flatnonzero(~both.ravel())
    flat = int(bad[0]) if bad.size else int(np.argmax(excess.ravel()))
    where = np.unravel_index(flat, ref.shape)
    return {"sample": int(where[0]) if ref.ndim else 0, "index": [int(i) for i in where[1:]],
            "reference": float(ref.ravel()[flat]), "actual": float(out.ravel()[flat]),
            "abs_error": float(abs(out.ravel()[flat] - ref.ravel()[flat]))}


def _agreement(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Minimum cosine similarity over samples; top-1 agreement and top-k overlap of 2-D logits."""
    n = ref.shape[0]
    a, b = out.reshape(n, -1), ref.reshape(n, -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(axis=1) / np.maximum(na * nb, np.finfo(np.float64).tiny))
    found: dict[str, Any] = {"cosine_min": float(np.clip(cos, -1.0, 1.0).min())}
    if ref.ndim == 2 and ref.shape[1] >= 2:
        k = min(TOPK, ref.shape[1])
        ta, tb = np.argsort(-a, axis=1, kind="stable")[:, :k], np.argsort(-b, axis=1, kind="stable")[:, :k]
        found.update(top1_agreement=float((a.argmax(axis=1) == b.argmax(axis=1)).mean()), topk=k,
                     top5_overlap=float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta.tolist(), tb.tolist())])))
    return found


def compare_output(name: str, reference: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> OutputComparison:
    """Every metric of ``actual`` (ONNX Runtime) against ``reference`` (PyTorch); shapes must match."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(actual, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch {out.shape} vs {ref.shape}")
    ref_ok, out_ok = np.isfinite(ref), np.isfinite(out)
    both = ref_ok & out_ok
    all_finite = bool(both.all())
    abs_ref = np.where(ref_ok, np.abs(ref), 0.0)
    scale = float(abs_ref.max()) if abs_ref.size else 0.0
    atol, rtol = tolerance.absolute_atol(scale), tolerance.rtol
    diff = np.where(both, np.abs(out - ref), 0.0)
    allowed = atol + rtol * abs_ref
    found: dict[str, Any] = {"max_abs_error": None, "mean_abs_error": None, "max_rel_error": None,
                             "min_atol": None, "min_rtol": None, "worst": None, "cosine_min": None,
                             "top1_agreement": None, "top5_overlap": None, "topk": None}
    if both.any():
        floor = REL_FLOOR * scale if scale > 0 else 1.0
        found.update(max_abs_error=float(diff.max()), mean_abs_error=float(diff[both].mean()),
                     max_rel_error=float((diff / np.maximum(abs_ref, floor))[both].max()))
    if all_finite and diff.size:
        found["min_atol"], found["min_rtol"] = _smallest_passing(diff, abs_ref, atol, rtol)
    if diff.size:
        found["worst"] = _worst(ref, out, both, diff - allowed)
    n = ref.shape[0] if ref.ndim else 1
    if all_finite and ref.ndim >= 1 and n:
        found.update(_agreement(ref, out))
    return OutputComparison(
        name=name, shape=tuple(ref.shape), atol=atol, rtol=rtol, tolerance_rule=tolerance.rule(), ref_scale=scale,
        nan=int(np.isnan(out).sum()), inf=int(np.isinf(out).sum()),
        ref_nan=int(np.isnan(ref).sum()), ref_inf=int(np.isinf(ref).sum()),
        violations=int(((diff > allowed) & both).sum() + (~both).sum()), samples=n, noise=tolerance.noise, **found,
    )


def worst_samples(reference: list[np.ndarray], actual: list[np.ndarray]) -> list[int]:
    """Sample indices ordered from the largest error to the smallest (non-finite first)."""
    n = reference[0].shape[0]
    score = np.zeros(n)
    for r, o in zip(reference, actual):
        d = np.abs(o.astype(np.float64) - r.astype(np.float64)).reshape(n, -1)
        d = np.where(np.isfinite(d), d, np.inf)
        score = np.maximum(score, d.max(axis=1))
    return [int(i) for i in np.argsort(-score, kind="stable")]
