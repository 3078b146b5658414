"""The int8 self-check: how closely an int8 file follows the float32 original it was quantized from.

The int8 file is checked like an accuracy measurement, not a parity test (:class:`Int8Check`):
on :func:`check_inputs` (shifted, noised calibration samples: the data's distribution, but not
tensors the ranges were fitted to) the int8 model must pick the same top-1
class as the float32 original on at least ``INT8_TOLERANCE['agreement']`` of the samples, and its
logits must point the same way (cosine similarity per sample, mean and minimum bounded).

Near-ties are not disagreements. With the original's logits ``r`` and the int8 file's ``q`` on one
sample, its top-1 margin ``m = r₍₁₎ − r₍₂₎`` (best minus runner-up) and the int8 logit error
``e = maxₖ |qₖ − rₖ|``, a sample counts as a disagreement only when::

    argmax q ≠ argmax r   and   m > e

Where the original's margin is no larger than the int8 file's logit error, its two best classes
are tied within the file's precision and either answer is as good: a random-weight network's
classes are often that close (resnet18_dcd with calibrated BatchNorms at 64×64, calibrated on 16
images: raw agreement 65.6 %, every differing sample such a near-tie, logit cosine 0.990). Where
the margin is larger, a flip is counted. A quantization that really breaks the model has logit
errors as large as the logits themselves, so this rule excuses most of its flips; the cosine
bounds refuse it (the w025 failure mode, top-1 at chance: raw agreement 12.5 %, margin-aware
84.4 %, cosine mean 0.18). Both agreements are reported; the verdict uses the margin-aware one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from ..runtime.onnxfile import input_spec

# The int8 self-check (see the module docstring). On the bundled digits samples (64 calibration
# images, 360 held-out digits, both lowered forms) agreement is 98-100 %, mean cosine 0.990-0.999
# and the worst single digit 0.79-0.95: the bounds catch a broken quantization, not a 1-point drop
# (that is `dcd-deploy evaluate --max-drop`'s job on the user's labelled data).
INT8_TOLERANCE = {"agreement": 0.9, "cosine_mean": 0.98, "cosine_min": 0.7}


@dataclasses.dataclass
class Int8Check:
    """How closely the int8 model follows the float32 original on calibration-independent inputs.

    ``agreement`` is the margin-aware top-1 agreement of the module docstring (a differing top-1
    counts only where the original's top-1 margin exceeds the int8 file's largest logit error on
    that sample); ``raw_agreement`` counts every differing top-1.
    """

    agreement: float  # share of samples that are not disagreements under the margin rule
    cosine_mean: float
    cosine_min: float
    samples: int
    tolerance: dict[str, float] = dataclasses.field(default_factory=lambda: dict(INT8_TOLERANCE))
    raw_agreement: float | None = None  # share of samples with the same top-1 class
    near_ties: int = 0  # samples whose top-1 differs where the original's margin is within the int8 logit error

    @property
    def passed(self) -> bool:
        return (self.agreement >= self.tolerance["agreement"] and self.cosine_mean >= self.tolerance["cosine_mean"]
                and self.cosine_min >= self.tolerance["cosine_min"])

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        t = self.tolerance
        raw = self.agreement if self.raw_agreement is None else self.raw_agreement
        return (f"int8 self-check vs float32 original on {self.samples} samples: top-1 agreement {self.agreement:.1%} "
                f"(≥ {t['agreement']:.0%}; raw {raw:.1%}, {self.near_ties} near-tie{'s' if self.near_ties != 1 else ''} "
                f"not counted: a differing top-1 counts where the original's top-1 margin exceeds the int8 logit error), "
                f"logit cosine mean {self.cosine_mean:.4f} (≥ {t['cosine_mean']}), "
                f"min {self.cosine_min:.4f} (≥ {t['cosine_min']}) {'PASS' if self.passed else 'FAIL'}")

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "raw_agreement": self.raw_agreement, "near_ties": self.near_ties,
                "agreement_rule": AGREEMENT_RULE, "cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
                "samples": self.samples, "tolerance": dict(self.tolerance), "passed": self.passed}


AGREEMENT_RULE = ("a sample is a disagreement when argmax(int8) != argmax(float32) and the float32 top-1 margin "
                  "(best minus runner-up logit) > max_k |int8_k - float32_k|")


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (float64; 1 when both are zero)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


def disagreements(int8_logits: np.ndarray, reference_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: ``(top-1 differs, and counts as a disagreement)`` under :data:`AGREEMENT_RULE`."""
    q = np.asarray(int8_logits, dtype=np.float64).reshape(len(int8_logits), -1)
    r = np.asarray(reference_logits, dtype=np.float64).reshape(len(reference_logits), -1)
    differs = np.argmax(q, axis=1) != np.argmax(r, axis=1)
    if r.shape[1] < 2:
        return differs, differs
    top2 = np.sort(r, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    error = np.abs(q - r).max(axis=1)
    return differs, differs & ~(margin <= error)  # a NaN error excuses nothing


def compare_int8(int8_logits: np.ndarray, reference_logits: np.ndarray,
                 tolerance: dict[str, float] | None = None) -> Int8Check:
    """:class:`Int8Check` of int8 logits against the float32 original's logits on the same inputs."""
    cos = cosine_per_sample(int8_logits, reference_logits)
    differs, counted = disagreements(int8_logits, reference_logits)
    return Int8Check(1.0 - float(np.mean(counted)), float(cos.mean()), float(cos.min()), len(cos),
                     dict(tolerance or INT8_TOLERANCE), raw_agreement=1.0 - float(np.mean(differs)),
                     near_ties=int(differs.sum() - counted.sum()))


def run_int8_check(int8_model: bytes | onnx.ModelProto, inputs: np.ndarray, reference_logits: np.ndarray,
                   batch: int | None = None) -> Int8Check:
    """Run ``int8_model`` on ONNX Runtime CPU over ``inputs`` and compare with ``reference_logits``."""
    from ..runtime.inputs import batches
    from ..runtime.session import create_session

    data = int8_model if isinstance(int8_model, bytes) else int8_model.SerializeToString()
    session = create_session(data, "cpu")
    spec = input_spec(onnx.load_from_string(data))
    size = spec.static_batch or batch or len(inputs)
    outs = []
    for start, stop in batches(len(inputs), size):
        x = inputs[start:stop]
        if spec.static_batch and len(x) < size:
            x = np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
        outs.append(session.run(None, {spec.name: np.ascontiguousarray(x, dtype=np.float32)})[0][:stop - start])
    return compare_int8(np.concatenate(outs), reference_logits)


def check_inputs(calibration: np.ndarray, count: int = 32, seed: int = 100) -> np.ndarray:
    """Self-check inputs on the calibration data's distribution but not among its samples.

    Each is a calibration sample (drawn with a seeded generator) shifted by 1 or 2 pixels in height
    and width (wrapping around) plus Gaussian noise at 5 % of its per-channel standard deviation;
    the quantization ranges were never fitted to these exact tensors.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((count, *calibration.shape[1:]), dtype=np.float32)
    for k, i in enumerate(rng.integers(0, len(calibration), size=count)):
        shift = tuple(int(v) for v in rng.choice([-2, -1, 1, 2], size=2))
        x = np.roll(calibration[i], shift, axis=(-2, -1))
        std = x.std(axis=(-2, -1), keepdims=True)
        out[k] = x + 0.05 * std * rng.standard_normal(x.shape).astype(np.float32)
    return out
