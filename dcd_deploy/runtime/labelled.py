"""Labelled data for accuracy measurements: arrays, compact raw images, or an ImageFolder tree.

Every source ends as float32 inputs ``(N, C, H, W)`` checked against the ONNX model's input (by
:func:`dcd_deploy.runtime.inputs.check_shape`) and int64 labels ``(N,)``:

* ``.npz`` with ``input`` (preprocessed float samples, as for ``parity --inputs``) and ``labels``;
* ``.npz`` with ``images`` (uint8, ``(N, h, w)`` or ``(N, h, w, c)``), ``labels`` and ``preprocess``,
  a JSON string recording the transform: ``{"pixel_max": 255, "size": [H, W], "channels": C,
  "mean": [...], "std": [...]}``. The images are scaled to [0, 1] (÷ pixel_max), resized
  bilinearly with ``torch.nn.functional.interpolate(align_corners=False)``, their channels
  replicated to C when they have one, and normalised with ``(x − mean) / std``. This keeps a
  held-out set small (360 8×8 digits are a few kilobytes, their 48×48 float inputs megabytes);
* a folder with one subfolder of images per class (torchvision's ImageFolder layout): classes
  are the subfolder names in sorted order, label ``i`` is the ``i``-th; each image is read as
  ``parity --inputs`` reads a folder (resized to the model's size, ``--mean/--std``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, summarize_exception
from .inputs import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, check_shape, load_inputs
from .onnxfile import InputSpec

_LABELS_FIX = "Save the labels beside the samples: np.savez(path, input=x, labels=y), y integer class indices."


@dataclasses.dataclass
class LabelledSet:
    """Samples ready to run and their class labels."""

    data: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64
    source: str  # 'npz' | 'images-npz' | 'folder'
    path: Path
    classes: list[str] | None = None  # folder: class names by label
    preprocess: dict[str, Any] | None = None

    @property
    def count(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        n = f"{self.count} labelled sample{'s' if self.count != 1 else ''}"
        if self.source == "folder":
            return f"{n} in {len(self.classes or [])} class folders under {self.path}"
        if self.source == "images-npz":
            return f"{n} from {self.path} (raw images, preprocessing recorded in the file)"
        return f"{n} from {self.path}"

    def class_name(self, label: int) -> str:
        return self.classes[label] if self.classes and label < len(self.classes) else str(label)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "path": str(self.path), "count": self.count,
                "shape": list(self.data.shape), "classes": self.classes, "preprocess": self.preprocess}


def check_labels(labels: Any, count: int, origin: str, num_classes: int | None = None) -> np.ndarray:
    """``labels`` as int64 ``(count,)``, each in ``[0, num_classes)``; raises :class:`InputError`."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != count:
        raise InputError(f"{origin}: 'labels' has shape {tuple(labels.shape)} but there are {count} samples.",
                         "Give one integer class index per sample, shape (N,).")
    if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise InputError(f"{origin}: 'labels' holds {labels.dtype} values, not class indices.",
                         "Give integer class indices 0..C-1, one per sample.")
    labels = labels.astype(np.int64)
    if count and labels.min() < 0:
        raise InputError(f"{origin}: 'labels' has the negative class index {int(labels.min())}.",
                         "Class indices start at 0.")
    if num_classes is not None and count and labels.max() >= num_classes:
        raise InputError(
            f"{origin}: label {int(labels.max())} is out of range: the model has {num_classes} classes (0..{num_classes - 1}).",
            "Check that the labels are the class indices this model was trained with.")
    return labels


def _preprocess_images(images: np.ndarray, recipe: dict[str, Any], origin: str) -> np.ndarray:
    """Apply a recorded ``preprocess`` recipe (see the module docstring) to uint8 images."""
    import torch
    import torch.nn.functional as F

    try:
        size = recipe["size"]
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        channels, pixel_max = int(recipe["channels"]), float(recipe.get("pixel_max", 255))
        mean = np.asarray(recipe["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(recipe["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{origin}: 'preprocess' is not a complete recipe (problem with {exc}).",
                         'Record {"pixel_max", "size", "channels", "mean", "std"} as a JSON string.') from None
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = F.interpolate(x / pixel_max, size=size, mode="bilinear", align_corners=False)
    if x.shape[1] == 1 and channels > 1:
        x = x.expand(-1, channels, -1, -1)
    if x.shape[1] != channels or mean.shape[1] not in (1, channels) or std.shape[1] not in (1, channels):
        raise InputError(f"{origin}: images with {x.shape[1]} channels do not fit the recipe's {channels} channels "
                         f"and {mean.shape[1]} means.", "Record one mean and std per channel.")
    out = (x - torch.from_numpy(mean)) / torch.from_numpy(std)
    return out.contiguous().numpy().astype(np.float32)


def _from_npz(path: Path, spec: InputSpec) -> LabelledSet:
    origin = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"Cannot read {path} as a NumPy .npz file: {summarize_exception(exc)}.",
                         _LABELS_FIX) from None
    if "labels" not in arrays:
        raise InputError(f"{origin} holds no 'labels' array (it has {', '.join(arrays) or 'nothing'}).", _LABELS_FIX)
    recipe = None
    if "input" in arrays:
        data, source = arrays["input"], "npz"
    elif "images" in arrays and "preprocess" in arrays:
        try:
            recipe = json.loads(str(arrays["preprocess"]))
        except json.JSONDecodeError:
            raise InputError(f"{origin}: 'preprocess' is not a JSON string.", "Store it as np.array(json.dumps(recipe)).") from None
        images = arrays["images"]
        if images.ndim not in (3, 4) or images.dtype.kind not in "ui":
            raise InputError(f"{origin}: 'images' has shape {images.shape} and dtype {images.dtype}.",
                             "Store raw images as integers, shape (N, H, W) or (N, H, W, C).")
        data, source = _preprocess_images(images, recipe, origin), "images-npz"
    else:
        raise InputError(f"{origin} holds 'labels' but no 'input' array (it has {', '.join(arrays)}).", _LABELS_FIX)
    data = check_shape(np.asarray(data), spec, origin)
    labels = check_labels(arrays["labels"], len(data), origin)
    return LabelledSet(np.ascontiguousarray(data, dtype=np.float32), labels, source, path, preprocess=recipe)


def _from_folder(path: Path, spec: InputSpec, input_size: tuple[int, int] | None, mean: Sequence[float],
                 std: Sequence[float]) -> LabelledSet:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        raise InputError(
            f"Folder {path} has no class subfolders" + (f" ({len(loose)} loose images)" if loose else " (it is empty)") + ".",
            "Arrange labelled images as DATA/<class name>/<image>, one subfolder per class in class-index order "
            "when sorted, or pass an .npz with 'input' and 'labels'.")
    data, labels = [], []
    for index, name in enumerate(classes):
        samples = load_inputs(path / name, spec, mean=mean, std=std, input_size=input_size)
        data.append(samples.data)
        labels.append(np.full(samples.count, index, dtype=np.int64))
    mean_std = {"mean": list(samples.mean or ()), "std": list(samples.std or ())}
    return LabelledSet(np.concatenate(data), np.concatenate(labels), "folder", path, classes=classes, preprocess=mean_std)


def load_labelled(source: str | os.PathLike, spec: InputSpec, input_size: tuple[int, int] | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  samples: int | None = None) -> LabelledSet:
    """Labelled samples for ``spec`` from ``source`` (see the module docstring), at most ``samples``."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"Labelled data {path} does not exist.",
                         "Pass an .npz with 'input' and 'labels', or a folder with one subfolder of images per class.")
    if path.is_dir():
        labelled = _from_folder(path, spec, input_size, mean or IMAGENET_MEAN, std or IMAGENET_STD)
    elif path.suffix.lower() == ".npz":
        labelled = _from_npz(path, spec)
    else:
        raise InputError(f"Cannot read labelled data from {path} (suffix {path.suffix or 'none'}).",
                         "Pass an .npz with 'input' and 'labels', or a folder with one subfolder of images per class.")
    if samples is not None:
        if samples < 1:
            raise InputError(f"--samples {samples} is not a positive number.", "Use --samples 1 or more.")
        labelled.data, labelled.labels = labelled.data[:samples], labelled.labels[:samples]
    return labelled


def load_samples(source: str | os.PathLike, spec: InputSpec, input_size: tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 samples: int | None = None) -> np.ndarray:
    """Unlabelled samples (e.g. int8 calibration data) as float32 ``(N, C, H, W)``.

    A compact ``.npz`` of raw ``images`` with a ``preprocess`` recipe is read as in
    :func:`load_labelled` (its labels, if any, are ignored); anything else as ``parity --inputs``
    reads it (:func:`dcd_deploy.runtime.inputs.load_inputs`: ``.npy``, ``.npz`` with ``input``, an
    image or a folder of images normalised with ``mean``/``std``). ``source`` is required.
    """
    path = Path(source)
    if path.suffix.lower() == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            compact = "images" in archive.files and "preprocess" in archive.files and "input" not in archive.files
        if compact:
            with np.load(path, allow_pickle=False) as archive:
                recipe = json.loads(str(archive["preprocess"]))
                data = check_shape(_preprocess_images(archive["images"], recipe, str(path)), spec, str(path))
            return np.ascontiguousarray(data[:samples], dtype=np.float32)
    return load_inputs(path, spec, samples=samples, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD,
                       input_size=input_size).data

