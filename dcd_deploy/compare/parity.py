"""Numerical parity: does an exported ONNX file compute what the ORIGINAL PyTorch model computes?

The reference is the network built from the checkpoint (not the lowered one), evaluated in
float32 or, on request, float64. Each ONNX Runtime execution provider runs the same samples and
each output is compared with the reference.

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

Metrics per provider and output: max and mean absolute error; max relative error
``|o − r| / max(|r|, 1e-3 · max|r|)`` (the floor keeps it finite and meaningful where the
reference is zero or tiny; when the whole reference is zero the floor is 1, i.e. the absolute
error); the minimum over samples of the cosine similarity; top-1 agreement and top-5 overlap of
2-D outputs (logits); NaN/Inf counts; and the smallest tolerance that would have passed: the
smallest atol at the chosen rtol, and the smallest rtol at the chosen atol (``None`` when none
would: a non-finite value, or an error above atol where the reference is exactly zero).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import InputError
from .inputs import IMAGENET_MEAN, IMAGENET_STD, InputSet, InputSpec, batches, check_shape, input_spec, load_inputs
from ..load.model import LoadedModel

SCHEMA = "dcd-deploy/parity/1"
REL_FLOOR = 1e-3
TOPK = 5
# Default (rtol, atol factor of max|ref|) per computing precision (see the module docstring).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 2e-2),
    "tf32": (1e-2, 2e-2),
}
_OFF = ("0", "false", "no", "off")


# --------------------------------------------------------------------------------------------
# tolerances


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|o − r| ≤ atol + rtol·|r|``; ``atol=None`` means ``atol_scale · max|r|``."""

    rtol: float
    atol: float | None = None
    atol_scale: float | None = None
    source: str = "default"  # 'default' | 'given'

    def absolute_atol(self, ref_scale: float) -> float:
        if self.atol is not None:
            return self.atol
        return (self.atol_scale or 0.0) * ref_scale

    def rule(self) -> str:
        atol = f"{self.atol:.1e}" if self.atol is not None else f"{self.atol_scale:.0e}·max|ref|"
        return f"{atol} + {self.rtol:.1e}·|ref|"


def default_tolerance(precision: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default tolerance for ``precision``, with user overrides applied."""
    d_rtol, d_scale = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["float32"])
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise InputError(f"--{name} {value} is not a tolerance.", f"Give a finite number >= 0, e.g. --{name} 1e-3.")
    given = atol is not None or rtol is not None
    return Tolerance(rtol=d_rtol if rtol is None else rtol, atol=atol,
                     atol_scale=None if atol is not None else d_scale, source="given" if given else "default")


def model_precision(model: onnx.ModelProto) -> str:
    """'float16' or 'float32': the export metadata, else the dtype most float initializers have."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("dcd_deploy.precision") in ("float16", "float32"):
        return meta["dcd_deploy.precision"]
    counts = {"float16": 0, "float32": 0}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16:
            counts["float16"] += 1
        elif init.data_type == onnx.TensorProto.FLOAT:
            counts["float32"] += 1
    return "float16" if counts["float16"] > counts["float32"] else "float32"


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


# --------------------------------------------------------------------------------------------
# one output on one provider


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
        return _clean({
            "name": self.name, "shape": list(self.shape), "passed": self.passed, "reason": self.reason(),
            "tolerance": {"atol": self.atol, "rtol": self.rtol, "rule": self.tolerance_rule, "ref_max_abs": self.ref_scale},
            "max_abs_error": self.max_abs_error, "mean_abs_error": self.mean_abs_error,
            "max_rel_error": self.max_rel_error, "cosine_similarity_min": self.cosine_min,
            "top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap, "topk": self.topk,
            "nan": self.nan, "inf": self.inf, "reference_nan": self.ref_nan, "reference_inf": self.ref_inf,
            "violations": self.violations, "smallest_passing_atol": self.min_atol,
            "smallest_passing_rtol": self.min_rtol, "worst": self.worst,
        })


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
    atol = tolerance.absolute_atol(scale)
    rtol = tolerance.rtol
    diff = np.where(both, np.abs(out - ref), 0.0)
    allowed = atol + rtol * abs_ref
    violations = int(((diff > allowed) & both).sum() + (~both).sum())

    max_abs = mean_abs = max_rel = min_atol = min_rtol = None
    worst = None
    if both.any():
        max_abs = float(diff.max())
        mean_abs = float(diff[both].mean())
        floor = REL_FLOOR * scale if scale > 0 else 1.0
        max_rel = float((diff / np.maximum(abs_ref, floor))[both].max())
    if all_finite and diff.size:
        min_atol = max(0.0, float((diff - rtol * abs_ref).max()))
        need = diff > atol
        if not need.any():
            min_rtol = 0.0
        elif (abs_ref[need] == 0).any():
            min_rtol = None
        else:
            min_rtol = float(((diff[need] - atol) / abs_ref[need]).max())
    if diff.size:
        bad = np.flatnonzero(~both.ravel())
        flat = int(bad[0]) if bad.size else int(np.argmax((diff - allowed).ravel()))
        where = np.unravel_index(flat, ref.shape)
        worst = {"sample": int(where[0]) if ref.ndim else 0, "index": [int(i) for i in where[1:]],
                 "reference": float(ref.ravel()[flat]), "actual": float(out.ravel()[flat]),
                 "abs_error": float(abs(out.ravel()[flat] - ref.ravel()[flat]))}

    n = ref.shape[0] if ref.ndim else 1
    cosine = top1 = top5 = None
    k = None
    if all_finite and ref.ndim >= 1 and n:
        a, b = out.reshape(n, -1), ref.reshape(n, -1)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        dots = (a * b).sum(axis=1)
        cos = np.where((na == 0) & (nb == 0), 1.0, dots / np.maximum(na * nb, np.finfo(np.float64).tiny))
        cosine = float(np.clip(cos, -1.0, 1.0).min())
        if ref.ndim == 2 and ref.shape[1] >= 2:
            top1 = float((a.argmax(axis=1) == b.argmax(axis=1)).mean())
            k = min(TOPK, ref.shape[1])
            ta, tb = np.argsort(-a, axis=1, kind="stable")[:, :k], np.argsort(-b, axis=1, kind="stable")[:, :k]
            top5 = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta.tolist(), tb.tolist())]))

    return OutputComparison(
        name=name, shape=tuple(ref.shape), atol=atol, rtol=rtol, tolerance_rule=tolerance.rule(), ref_scale=scale,
        max_abs_error=max_abs, mean_abs_error=mean_abs, max_rel_error=max_rel, cosine_min=cosine,
        top1_agreement=top1, top5_overlap=top5, topk=k,
        nan=int(np.isnan(out).sum()), inf=int(np.isinf(out).sum()),
        ref_nan=int(np.isnan(ref).sum()), ref_inf=int(np.isinf(ref).sum()),
        violations=violations, min_atol=min_atol, min_rtol=min_rtol, worst=worst, samples=n,
    )


# --------------------------------------------------------------------------------------------
# one provider, and the whole result


@dataclasses.dataclass
class ProviderResult:
    provider: str  # full ONNX Runtime name
    device: str
    options: dict[str, str]  # effective options, as ONNX Runtime reports them
    requested_options: dict[str, Any]  # what dcd-deploy and the user set
    precision: str  # what the provider computes in: float32 | float16 | tf32
    precision_note: str | None
    tolerance: Tolerance
    outputs: list[OutputComparison]
    run_s: float

    @property
    def short(self) -> str:
        from ..runtime.session import short_name

        return short_name(self.provider)

    @property
    def passed(self) -> bool:
        return all(self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.short, "provider": self.provider, "device": self.device, "passed": self.passed,
            "options": self.options, "requested_options": self.requested_options,
            "precision": self.precision, "precision_note": self.precision_note,
            "tolerance": {"rtol": self.tolerance.rtol, "atol": self.tolerance.atol,
                          "atol_scale": self.tolerance.atol_scale, "source": self.tolerance.source,
                          "rule": self.tolerance.rule()},
            "outputs": [o.to_dict() for o in self.outputs], "run_s": self.run_s,
        }


def _e(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}e}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


@dataclasses.dataclass
class ParityResult:
    """Everything one parity run found; truthy when every provider passed every output."""

    model_path: Path
    model_precision: str
    input: InputSpec
    inputs: InputSet
    batch: int
    reference: dict[str, Any]
    providers: list[ProviderResult]
    notes: list[str] = dataclasses.field(default_factory=list)
    localizations: list[Any] = dataclasses.field(default_factory=list)  # localize.Localization
    saved_io: dict[str, str] | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.providers) and all(self.providers)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[tuple[ProviderResult, OutputComparison]]:
        return [(p, o) for p in self.providers for o in p.outputs if not o]

    def summary(self) -> str:
        names = ", ".join(p.short for p in self.providers)
        if self.passed:
            return f"PASS: ONNX Runtime ({names}) matches the original PyTorch model on {self.inputs.count} samples."
        parts = [f"{p.short}/{o.name}: {o.reason()}" for p, o in self.failures]
        return "FAIL: " + "; ".join(parts) + "."

    def render(self) -> str:
        ref = self.reference
        arch = ref.get("arch") or "a PyTorch model"
        if ref.get("options"):
            arch += " (" + ", ".join(f"{k}={v}" for k, v in ref["options"].items()) + ")"
        src = f" from {ref['checkpoint']}" if ref.get("checkpoint") else ""
        lines = [
            f"parity: {self.model_path} ({self.model_precision} model, input {self.input.describe()})",
            f"reference: original PyTorch {arch}{src}, evaluated in {ref['dtype']}",
            f"inputs: {self.inputs.describe()}; batch {self.batch}",
        ]
        for p in self.providers:
            opts = ", ".join(f"{k}={v}" for k, v in p.requested_options.items())
            lines.append(f"  {p.short}: {p.provider} on {p.device}" + (f" [{opts}]" if opts else "")
                         + f"; computes in {p.precision}" + (f" ({p.precision_note})" if p.precision_note else ""))
        header = ["provider", "output", "max abs", "max rel", "mean abs", "cos min", "top-1", "top-5",
                  "NaN/Inf", "tolerance (atol + rtol·|ref|)", "min atol", "min rtol", "verdict"]
        rows = []
        for p in self.providers:
            for o in p.outputs:
                top1 = "-" if o.top1_agreement is None else f"{round(o.top1_agreement * o.samples)}/{o.samples}"
                top5 = "-" if o.top5_overlap is None else f"{100 * o.top5_overlap:.0f}%"
                cos = "-" if o.cosine_min is None else f"{o.cosine_min:.6f}"
                rows.append([p.short, o.name, _e(o.max_abs_error), _e(o.max_rel_error), _e(o.mean_abs_error), cos,
                             top1, top5, f"{o.nan}/{o.inf}", f"{o.atol:.1e} + {o.rtol:.1e}·|ref|",
                             _e(o.min_atol), _e(o.min_rtol), "PASS" if o else "FAIL"])
        lines += ["", _table(header, rows), ""]
        for note in self.notes:
            lines.append(f"note: {note}")
        for loc in self.localizations:
            lines += [loc.render(), ""]
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        meta = self.reference.get("onnx_metadata", {})
        return _clean({
            "schema": SCHEMA,
            "passed": self.passed,
            "verdict": "pass" if self.passed else "fail",
            "summary": self.summary(),
            "model": {"path": str(self.model_path), "precision": self.model_precision,
                      "input": {"name": self.input.name, "shape": list(self.input.shape),
                                "dtype": np.dtype(self.input.dtype).name},
                      "metadata": meta},
            "reference": {k: v for k, v in self.reference.items() if k != "onnx_metadata"},
            "inputs": {**self.inputs.to_dict(), "batch": self.batch},
            "providers": [p.to_dict() for p in self.providers],
            "localization": [loc.to_dict() for loc in self.localizations] or None,
            "saved_io": self.saved_io,
            "notes": self.notes,
            "versions": self.versions,
            "machine": self.machine,
        })

    def write_json(self, path: str | os.PathLike) -> None:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        Path(path).write_text(text + "\n")


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None, numpy scalars Python ones."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --------------------------------------------------------------------------------------------
# running


@dataclasses.dataclass
class OnnxFile:
    path: Path
    proto: onnx.ModelProto
    spec: InputSpec
    metadata: dict[str, str]
    precision: str


def read_onnx(path: str | os.PathLike) -> OnnxFile:
    """The ONNX file's graph (without external weights), input, metadata and precision."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"ONNX model {path} does not exist.", "Check the path, or write it with `dcd-deploy export`.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an ONNX file.", "Pass the .onnx file written by `dcd-deploy export`.")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__}).",
                         "Pass the .onnx file written by `dcd-deploy export`; the file may be truncated.") from None
    if not proto.graph.node:
        raise InputError(f"{path} holds no ONNX graph.", "Pass the .onnx file written by `dcd-deploy export`.")
    meta = {p.key: p.value for p in proto.metadata_props}
    return OnnxFile(path, proto, input_spec(proto), meta, model_precision(proto))


def resolve_providers(spec: str | Sequence[str]) -> list[str]:
    """Full provider names, each checked to be available (raises ProviderUnavailableError)."""
    from ..runtime.session import check_available, parse_providers

    names = parse_providers(spec)
    if not names:
        raise InputError("No execution provider was given.", "Pass --providers cpu (or cpu,cuda).")
    for name in names:
        check_available(name)
    return names


def parse_provider_options(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``['cuda:use_tf32=0', ...]`` → ``{'CUDAExecutionProvider': {'use_tf32': '0'}}``."""
    from ..runtime.session import provider_name

    options: dict[str, dict[str, str]] = {}
    for item in items:
        prov, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not prov.strip() or not key.strip():
            raise InputError(f"--provider-option {item!r} is not PROVIDER:KEY=VALUE.",
                             "Write it as e.g. --provider-option cuda:use_tf32=0.")
        options.setdefault(provider_name(prov), {})[key.strip()] = value.strip()
    return options


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    raise InputError(f"The PyTorch model returned a {type(out).__name__}, not tensors.",
                     "Its forward() must return a tensor (or a tuple of tensors) like the exported graph.")


def run_reference(model: nn.Module, data: np.ndarray, batch: int, dtype: str) -> list[np.ndarray]:
    """The original model's outputs on ``data`` (float32 or float64), ``batch`` samples at a time."""
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model = (copy.deepcopy(model).double() if dtype == "float64" else model).eval()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start, stop in batches(len(data), batch):
            x = torch.from_numpy(np.ascontiguousarray(data[start:stop])).to(torch_dtype)
            try:
                outs = _flatten(model(x))
            except RuntimeError as exc:
                raise InputError(
                    f"The PyTorch model from the checkpoint does not run on inputs of shape {tuple(x.shape)}: "
                    f"{str(exc).splitlines()[0]}.",
                    "The checkpoint does not match the ONNX model's input; pass the checkpoint it was exported from.",
                ) from None
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def run_session(session: Any, spec: InputSpec, data: np.ndarray, batch: int) -> tuple[list[str], list[np.ndarray]]:
    """ONNX Runtime outputs on ``data``; a static batch is filled by repeating the last sample."""
    names = [o.name for o in session.get_outputs()]
    chunks: list[list[np.ndarray]] = []
    for start, stop in batches(len(data), batch):
        x = data[start:stop]
        n = len(x)
        if spec.static_batch and n < spec.static_batch:
            x = np.concatenate([x, np.repeat(x[-1:], spec.static_batch - n, axis=0)])
        try:
            outs = session.run(names, {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)})
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"ONNX Runtime rejected inputs of shape {tuple(x.shape)}: {text[:300]}.",
                             f"Give inputs matching the model's input {spec.describe()}.") from None
        chunks.append([np.asarray(o)[:n] for o in outs])
    return names, [np.concatenate([c[i] for c in chunks]) for i in range(len(names))]


def check_pairing(meta: dict[str, str], loaded: LoadedModel | None) -> list[str]:
    """Raise InputError when the ONNX metadata names another network than the checkpoint builds."""
    notes: list[str] = []
    if loaded is None:
        return notes
    arch = meta.get("dcd_deploy.arch")
    fix = ("Pass the checkpoint the ONNX file was exported from, or re-export it from this checkpoint with "
           "`dcd-deploy export`.")
    registered = ":" not in loaded.arch
    if arch and registered and ":" not in arch and arch != loaded.arch:
        raise InputError(f"The ONNX model was exported from a {arch} network, but the checkpoint builds a "
                         f"{loaded.arch}.", fix)
    if arch == loaded.arch and registered and meta.get("dcd_deploy.arch_options"):
        try:
            exported = json.loads(meta["dcd_deploy.arch_options"])
        except ValueError:
            exported = {}
        differ = [f"{k}={exported[k]!r} in the ONNX file, {loaded.options[k]!r} in the checkpoint"
                  for k in sorted(set(exported) & set(loaded.options))
                  if k != "dropout" and exported[k] != loaded.options[k]]
        if differ:
            raise InputError(f"The ONNX model and the checkpoint are different {arch} networks ({'; '.join(differ)}).", fix)
    recorded = meta.get("dcd_deploy.checkpoint_sha256")
    actual = loaded.checkpoint.sha256 if loaded.checkpoint is not None else None
    if recorded and actual and recorded != actual:
        name = meta.get("dcd_deploy.checkpoint") or "another file"
        notes.append(f"the ONNX file was exported from a different checkpoint file ({name}, sha256 {recorded[:12]}…; "
                     f"this one is {actual[:12]}…); the comparison shows whether they still compute the same")
    return notes


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "output"


def save_io(folder: str | os.PathLike, inputs: np.ndarray, names: list[str], reference: list[np.ndarray],
            per_provider: dict[str, list[np.ndarray]]) -> dict[str, str]:
    """``inputs.npy``, ``reference.<output>.npy`` and ``<provider>.<output>.npy`` in ``folder``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create --save-io folder {folder}: {exc.strerror or exc}.",
                         "Choose a writable folder.") from None
    files = {"inputs": "inputs.npy"}
    np.save(folder / "inputs.npy", inputs)
    for name, ref in zip(names, reference):
        files[f"reference.{name}"] = f"reference.{_safe(name)}.npy"
        np.save(folder / files[f"reference.{name}"], ref)
    for prov, outs in per_provider.items():
        for name, out in zip(names, outs):
            files[f"{prov}.{name}"] = f"{_safe(prov)}.{_safe(name)}.npy"
            np.save(folder / files[f"{prov}.{name}"], out)
    (folder / "manifest.json").write_text(json.dumps(files, indent=2) + "\n")
    return {k: str(folder / v) for k, v in files.items()}


def check_parity(
    model: str | os.PathLike | OnnxFile,
    reference: str | os.PathLike | LoadedModel | nn.Module,
    providers: str | Sequence[str] = ("cpu",),
    inputs: str | os.PathLike | np.ndarray | InputSet | Any | None = None,
    samples: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    reference_dtype: str = "float32",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    input_size: tuple[int, int] | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None,
    save_io_dir: str | os.PathLike | None = None,
    localize: bool = False,
    load_options: dict[str, Any] | None = None,
) -> ParityResult:
    """Compare ONNX file ``model`` on each provider with the original PyTorch ``reference``.

    ``reference`` is a checkpoint path (loaded with :func:`dcd_deploy.load_model` and
    ``load_options``), a :class:`LoadedModel` or an ``nn.Module`` (put in eval mode).
    ``inputs`` is anything :func:`dcd_deploy.inputs.load_inputs` takes (``None``: seeded random)
    or a ready :class:`InputSet`. ``provider_options`` maps a provider (alias or full name) to
    its ONNX Runtime options. Raises :class:`InputError` (exit 2) for unusable inputs or a
    checkpoint that does not fit the model, and :class:`ProviderUnavailableError` (exit 3); a
    numerical mismatch is not raised but reported by the falsy result.
    """
    from ..sysinfo import machine, versions

    if reference_dtype not in ("float32", "float64"):
        raise InputError(f"--reference {reference_dtype} is not a reference precision.", "Use float32 or float64.")
    default_tolerance("float32", atol, rtol)  # reject bad tolerances before any work
    names = resolve_providers(providers)
    onnx_file = model if isinstance(model, OnnxFile) else read_onnx(model)
    spec = onnx_file.spec
    if batch is not None and batch < 1:
        raise InputError(f"--batch {batch} is not a positive batch size.", "Use --batch 1 or more, or leave it out.")
    if batch is not None and spec.static_batch and batch != spec.static_batch:
        raise InputError(f"--batch {batch} does not fit the model, whose batch size is fixed at {spec.static_batch}.",
                         "Leave --batch out (samples are run in batches of the fixed size).")
    if isinstance(inputs, InputSet):
        data = dataclasses.replace(inputs, data=check_shape(inputs.data, spec, "The inputs"))
    else:
        data = load_inputs(inputs, spec, samples=samples, seed=seed, mean=mean, std=std, input_size=input_size)
    run_batch = spec.static_batch or batch or data.count

    loaded, module = _reference_model(reference, load_options)
    notes = check_pairing(onnx_file.metadata, loaded)
    if data.available is not None and data.available > data.count:
        notes.append(f"used the first {data.count} of the {data.available} samples in {data.path or 'the input array'}")
    ref_outputs = run_reference(module, data.data, run_batch, reference_dtype)
    ref_info: dict[str, Any] = {
        "dtype": reference_dtype,
        "arch": loaded.arch if loaded else type(module).__qualname__,
        "options": loaded.options if loaded else None,
        "checkpoint": str(loaded.checkpoint.path) if loaded and loaded.checkpoint.path else None,
        "checkpoint_sha256": loaded.checkpoint.sha256 if loaded else None,
        "onnx_metadata": {k: v for k, v in onnx_file.metadata.items() if k != "dcd_deploy.rewrite"},
    }

    options = {_full(k): v for k, v in (provider_options or {}).items()}
    results: list[ProviderResult] = []
    outputs: dict[str, list[np.ndarray]] = {}
    output_names: list[str] = []
    for name in names:
        provider_result, output_names, outs = _run_provider(onnx_file, name, options.get(name, {}), data.data,
                                                            run_batch, ref_outputs, atol, rtol)
        results.append(provider_result)
        outputs[provider_result.short] = outs

    import onnxruntime

    result = ParityResult(onnx_file.path, onnx_file.precision, spec, data, run_batch, ref_info, results, notes,
                          versions={**versions(), "onnxruntime_available_providers":
                                    ",".join(onnxruntime.get_available_providers())},
                          machine=machine())
    if save_io_dir is not None:
        result.saved_io = save_io(save_io_dir, data.data, output_names, ref_outputs, outputs)
    if localize:
        from .localize import localize as localize_failure

        failing = [p for p in results if not p]
        if not failing:
            result.notes.append("--localize: every provider passed, so there is no divergence to localise")
        for p in failing:
            order = _worst_samples(ref_outputs, outputs[p.short])
            result.localizations.append(localize_failure(onnx_file, module, data.data, order, p.provider,
                                                         options.get(p.provider, {}), p.precision, reference_dtype))
    return result


def _reference_model(reference: str | os.PathLike | LoadedModel | nn.Module,
                     load_options: dict[str, Any] | None) -> tuple[LoadedModel | None, nn.Module]:
    if isinstance(reference, LoadedModel):
        return reference, reference.model
    if isinstance(reference, nn.Module):
        return None, reference
    from ..load.model import load_model

    loaded = load_model(reference, **(load_options or {}))
    return loaded, loaded.model


def _run_provider(onnx_file: OnnxFile, name: str, given: dict[str, Any], data: np.ndarray, batch: int,
                  reference: list[np.ndarray], atol: float | None, rtol: float | None,
                  ) -> tuple[ProviderResult, list[str], list[np.ndarray]]:
    """Run ``data`` on provider ``name`` and compare every output with ``reference``."""
    from ..runtime.session import create_session, default_provider_options, device_name

    spec = onnx_file.spec
    session = create_session(onnx_file.path, name, provider_options=given, dynamic_shapes=spec.dynamic)
    effective = {k: str(v) for k, v in session.get_provider_options().get(name, {}).items()}
    requested = {**default_provider_options(name, spec.dynamic), **given}
    start = time.perf_counter()
    names, outs = run_session(session, spec, data, batch)
    run_s = time.perf_counter() - start
    if len(outs) != len(reference):
        raise InputError(f"The ONNX model has {len(outs)} outputs ({', '.join(names)}) but the checkpoint's "
                         f"network returns {len(reference)}.", "Pass the checkpoint the ONNX file was exported from.")
    for out_name, o, r in zip(names, outs, reference):
        if o.shape != r.shape:
            raise InputError(
                f"ONNX output {out_name!r} has shape {tuple(o.shape)} but the checkpoint's network gives "
                f"{tuple(r.shape)}: they are not the same network.",
                "Pass the checkpoint the ONNX file was exported from, or re-export it from this checkpoint with "
                "`dcd-deploy export`.")
    precision, why = compute_precision(onnx_file.precision, name, effective)
    tolerance = default_tolerance(precision, atol, rtol)
    comparisons = [compare_output(n, r, o, tolerance) for n, r, o in zip(names, reference, outs)]
    return (ProviderResult(name, device_name(name), effective, requested, precision, why, tolerance, comparisons, run_s),
            names, outs)


def _full(provider: str) -> str:
    from ..runtime.session import provider_name

    return provider_name(provider)


def _worst_samples(reference: list[np.ndarray], actual: list[np.ndarray]) -> list[int]:
    """Sample indices ordered from the largest error to the smallest (non-finite first)."""
    n = reference[0].shape[0]
    score = np.zeros(n)
    for r, o in zip(reference, actual):
        d = np.abs(o.astype(np.float64) - r.astype(np.float64)).reshape(n, -1)
        d = np.where(np.isfinite(d), d, np.inf)
        score = np.maximum(score, d.max(axis=1))
    return [int(i) for i in np.argsort(-score, kind="stable")]
