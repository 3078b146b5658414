"""Accuracy of an ONNX model on labelled data, beside the PyTorch original it was exported from.

:func:`evaluate` runs labelled samples (:mod:`dcd_deploy.runtime.labelled`) through the ONNX file on each execution
provider and, when a checkpoint is given, through the original PyTorch network in float32, and
reports for each: top-1 and top-5 accuracy (top-k with k = the number of classes when there are
fewer than five), plus the agreement (share of samples where the ONNX model's top-1 class equals
the original's) and the classes whose predictions changed most. It is the check for exports that
are not meant to be bit-close to the original (int8, float16): ``max_drop`` (points) turns the
result false when the ONNX model's top-1 falls further than that below the original's.

Order of work: providers, the ONNX file and the data are checked before the checkpoint is loaded,
so the cheap mistakes fail first. Fractions are in 0..1; ``render`` prints percentages.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AccuracyDrop, InputError
from ..reporting import json_safe, table, to_json, write_output
from ..runtime.inputs import batches
from ..runtime.labelled import LabelledSet, check_labels, load_labelled
from ..runtime.onnxfile import OnnxFile, read_onnx
from ..runtime.session import check_available, create_session, parse_providers, short_name

DEFAULT_BATCH = 32
TOP_K = 5


@dataclasses.dataclass
class Score:
    """Top-1 / top-k accuracy of one model on the labelled set, and its predictions."""

    name: str  # 'cpu', 'cuda', or 'reference'
    top1: float
    top5: float
    k: int
    predictions: np.ndarray  # (N,) top-1 class per sample

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "top1": self.top1, "top5": self.top5, "k": self.k}


@dataclasses.dataclass
class ClassChange:
    """One true class: how many of its samples each model got right, and how many predictions flipped."""

    label: int
    name: str
    count: int
    reference_correct: int
    onnx_correct: int
    changed: int  # samples whose top-1 differs between the two models

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EvaluationResult:
    model_path: Path
    precision: str
    data: LabelledSet
    scores: list[Score]  # one per provider, in the order given
    reference: Score | None
    changes: list[ClassChange]  # classes with changed predictions, most first (first provider)
    max_drop: float | None = None  # points
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def onnx(self) -> Score:
        return self.scores[0]

    @property
    def n(self) -> int:
        return self.data.count

    def agreement(self, score: Score | None = None) -> float | None:
        if self.reference is None:
            return None
        return float(np.mean((score or self.onnx).predictions == self.reference.predictions))

    def drop_points(self, score: Score | None = None) -> float | None:
        """How far (percentage points) the ONNX model's top-1 is below the reference's."""
        return None if self.reference is None else 100.0 * (self.reference.top1 - (score or self.onnx).top1)

    @property
    def passed(self) -> bool:
        if self.max_drop is None or self.reference is None:
            return True
        return all(self.drop_points(s) <= self.max_drop + 1e-9 for s in self.scores)

    def __bool__(self) -> bool:
        return self.passed

    def failure(self) -> AccuracyDrop | None:
        """The error to raise for a failed ``max_drop`` gate (exit status 1), None when it passed."""
        if self.passed:
            return None
        worst = max(self.scores, key=lambda s: self.drop_points(s))
        return AccuracyDrop(
            f"The ONNX model's top-1 on {worst.name} ({worst.top1:.2%}) fell {self.drop_points(worst):.2f} points below "
            f"the checkpoint's ({self.reference.top1:.2%}), more than --max-drop {self.max_drop:g}.",
            "Re-export (for int8: more or more representative calibration data, or another --calibration-method), "
            "or raise --max-drop if the drop is acceptable.")

    def summary(self) -> str:
        text = f"{self.model_path.name} ({self.precision}) on {self.n} samples: top-1 {self.onnx.top1:.2%}"
        if self.reference is not None:
            text += (f", reference {self.reference.top1:.2%} ({-self.drop_points():+.2f} points), "
                     f"top-1 agreement {self.agreement():.2%}")
        if self.max_drop is not None and self.reference is not None:
            text += f"; max drop {self.max_drop:g} points: {'PASS' if self.passed else 'FAIL'}"
        return text

    def render(self) -> str:
        rows = [[f"onnx ({s.name})", f"{s.top1:.2%}", f"{s.top5:.2%}",
                 f"{self.agreement(s):.2%}" if self.reference else "-",
                 f"{-self.drop_points(s):+.2f}" if self.reference else "-"] for s in self.scores]
        if self.reference is not None:
            rows.append(["reference (PyTorch)", f"{self.reference.top1:.2%}", f"{self.reference.top5:.2%}", "", ""])
        lines = [f"data:  {self.data.describe()}",
                 table(["model", "top-1", f"top-{self.onnx.k}", "agreement", "Δ top-1 (points)"], rows, "lrrrr")]
        if self.changes:
            lines.append("classes that changed most (samples of the class whose top-1 differs between the models):")
            lines.append(table(["class", "samples", "reference correct", "onnx correct", "changed"],
                               [[c.name, str(c.count), str(c.reference_correct), str(c.onnx_correct), str(c.changed)]
                                for c in self.changes], "lrrrr"))
        lines += [f"note: {note}" for note in self.notes]
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "model": str(self.model_path), "precision": self.precision, "n": self.n, "data": self.data.to_dict(),
            "onnx": self.onnx.to_dict(), "providers": [s.to_dict() for s in self.scores],
            "reference": self.reference.to_dict() if self.reference else None,
            "agreement": self.agreement(), "drop_points": self.drop_points(), "max_drop": self.max_drop,
            "passed": self.passed, "changed_classes": [c.to_dict() for c in self.changes],
            "notes": self.notes,
        })

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_output(path, self.to_json(), "--json report")


def score(name: str, logits: np.ndarray, labels: np.ndarray) -> Score:
    """Top-1 and top-k accuracy of ``logits`` (N × classes) against ``labels``."""
    k = min(TOP_K, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    top1 = float(np.mean(top[:, 0] == labels)) if len(labels) else 0.0
    topk = float(np.mean((top == labels[:, None]).any(axis=1))) if len(labels) else 0.0
    return Score(name, top1, topk, k, top[:, 0])


def class_changes(data: LabelledSet, onnx: Score, reference: Score, limit: int = 5) -> list[ClassChange]:
    """Classes with at least one changed top-1, most changes first (then larger accuracy change)."""
    changes = []
    for label in np.unique(data.labels):
        mask = data.labels == label
        changed = int(np.sum(onnx.predictions[mask] != reference.predictions[mask]))
        if changed:
            changes.append(ClassChange(int(label), data.class_name(int(label)), int(mask.sum()),
                                       int(np.sum(reference.predictions[mask] == label)),
                                       int(np.sum(onnx.predictions[mask] == label)), changed))
    changes.sort(key=lambda c: (-c.changed, -abs(c.reference_correct - c.onnx_correct), c.label))
    return changes[:limit]


def _logits(run_batch, data: np.ndarray, batch: int, desc: str, progress: bool) -> np.ndarray:
    """Concatenated first outputs of ``run_batch`` over ``data``, ``batch`` samples at a time, with a bar."""
    from tqdm import tqdm

    outs = []
    with tqdm(total=len(data), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start, stop in batches(len(data), batch):
            out = np.asarray(run_batch(data[start:stop]))
            if out.ndim != 2:
                raise InputError(f"The model's first output has shape {tuple(out.shape)}, not (batch, classes).",
                                 "evaluate needs a classifier whose first output is the logits.")
            outs.append(out)
            bar.update(stop - start)
    return np.concatenate(outs)


def _onnx_logits(onnx_file: OnnxFile, provider: str, data: np.ndarray, batch: int, progress: bool) -> np.ndarray:
    from .runs import run_session

    spec = onnx_file.spec
    session = create_session(onnx_file.path, provider, dynamic_shapes=spec.dynamic)
    run = lambda x: run_session(session, spec, x, spec.static_batch or batch)[1][0]
    return _logits(run, data, spec.static_batch or batch, f"onnx ({short_name(provider)})", progress)


def evaluate(model: str | os.PathLike | OnnxFile, data: str | os.PathLike, reference: Any = None,
             providers: str | Sequence[str] = "cpu", batch: int = DEFAULT_BATCH, input_size: tuple[int, int] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None, samples: int | None = None,
             max_drop: float | None = None, progress: bool = False,
             load_options: dict[str, Any] | None = None) -> EvaluationResult:
    """Accuracy of ONNX ``model`` on labelled ``data``, and of the original when ``reference`` is given.

    ``reference`` is what :func:`dcd_deploy.check_parity` accepts (a checkpoint path loaded with
    ``load_options``, a :class:`LoadedModel`, an ``nn.Module``, or a function returning one).
    Raises :class:`InputError` for unusable data (no labels, wrong shape, a label out of range, an
    empty folder) and :class:`ProviderUnavailableError` for a provider that is not installed.
    """
    if batch < 1:
        raise InputError(f"--batch {batch} is not a positive batch size.", "Use --batch 1 or more.")
    if max_drop is not None and max_drop < 0:
        raise InputError(f"--max-drop {max_drop:g} is negative.", "Give the allowed drop in points, e.g. --max-drop 1.")
    names = parse_providers(providers)
    for name in names:
        check_available(name)
    onnx_file = model if isinstance(model, OnnxFile) else read_onnx(model)
    labelled = load_labelled(data, onnx_file.spec, input_size=input_size, mean=mean, std=std, samples=samples)
    scores = []
    for name in names:
        logits = _onnx_logits(onnx_file, name, labelled.data, batch, progress)
        check_labels(labelled.labels, labelled.count, str(labelled.path), num_classes=logits.shape[1])
        scores.append(score(short_name(name), logits, labelled.labels))
    ref, changes, notes = None, [], []
    if reference is not None:
        from .reference import check_pairing, reference_model, run_reference

        loaded, module = reference_model(reference, load_options)
        notes = check_pairing(onnx_file.metadata, loaded)
        run = lambda x: run_reference(module, x, len(x), "float32")[0]
        ref = score("reference", _logits(run, labelled.data, batch, "reference (PyTorch)", progress), labelled.labels)
        changes = class_changes(labelled, scores[0], ref)
    return EvaluationResult(onnx_file.path, onnx_file.metadata.get("dcd_deploy.precision", onnx_file.precision),
                            labelled, scores, ref, changes, max_drop, notes)
