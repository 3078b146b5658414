"""Input data fed to ONNX Runtime (parity, evaluation, int8 calibration): seeded random tensors,
``.npy``/``.npz`` arrays, or image folders.

Every source ends as one float array ``(N, C, H, W)`` whose shape has been checked against the
ONNX model's input, so a wrong file fails here with an :class:`InputError` that says how to fix
it, never later inside ONNX Runtime or PyTorch.

* random: ``standard_normal`` from ``numpy.random.default_rng(seed)`` (the scale of normalised
  images), at the model's input size: the graph's static height and width, else the
  ``dcd_deploy.input_size`` metadata written by ``dcd-deploy export``, else ``input_size``;
* ``.npy``: the array itself; ``.npz``: the array under key ``input``, or the only array;
  a single ``(C, H, W)`` sample is accepted as a batch of one;
* a folder of images (or one image file): decoded with Pillow, converted to RGB (or grey for
  one-channel models), resized bilinearly to the model's H×W, scaled to [0, 1] and normalised
  per channel with ``(x − mean) / std`` (ImageNet's mean and std by default).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, summarize_exception
from .onnxfile import InputSpec, input_spec, parse_size  # noqa: F401 - input_spec, parse_size re-exported

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_RANDOM_SAMPLES = 16


@dataclasses.dataclass
class InputSet:
    """Input samples ready to run, and where they came from."""

    data: np.ndarray  # (N, C, H, W), float32
    source: str  # 'random' | 'npy' | 'npz' | 'images' | 'array'
    path: Path | None = None
    seed: int | None = None
    files: list[str] = dataclasses.field(default_factory=list)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    available: int | None = None  # samples in the source before --samples cut it

    @property
    def count(self) -> int:
        return int(self.data.shape[0])

    def describe(self) -> str:
        shape = "×".join(str(d) for d in self.data.shape[1:])
        n = f"{self.count} sample{'s' if self.count != 1 else ''} ({shape})"
        if self.source == "random":
            return f"{n}, seeded random normal (seed {self.seed})"
        if self.source == "images":
            mean = ", ".join(f"{m:g}" for m in self.mean or ())
            std = ", ".join(f"{s:g}" for s in self.std or ())
            return f"{n} from images in {self.path} (resized, mean {mean}, std {std})"
        if self.source == "array":
            return f"{n} from an in-memory array"
        return f"{n} from {self.path}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "count": self.count,
            "available": self.available if self.available is not None else self.count,
            "shape": list(self.data.shape),
            "seed": self.seed,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "files": self.files or None,
        }


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of /proc/meminfo, else the free
    physical pages (``os.sysconf``); ``None`` when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.1f} {unit})"
    return f"{n:,} bytes"


def check_input_memory(samples: int, channels: int, hw: tuple[int, int], bytes_per_value: int = 4,
                       what: str = "the example inputs", fix: str = "") -> int:
    """Raise :class:`InputError` (exit 2) when ``samples`` × ``channels`` × H × W values of
    ``bytes_per_value`` bytes (the inputs a command builds at ``--input-size``, with the copies it makes
    of them) exceed the memory available, before any work; returns the bytes needed. Activations are
    not counted: this catches an input size that cannot fit at all, not a tight one."""
    h, w = hw
    need = int(samples) * int(channels) * int(h) * int(w) * int(bytes_per_value)
    available = available_memory()
    if available is not None and need > available:
        raise InputError(
            f"--input-size {h}x{w} is too large: {what} alone would need {_bytes(need)} ({samples} sample"
            f"{'s' if samples != 1 else ''} × {channels}×{h}×{w} values × {bytes_per_value} bytes), and this "
            f"machine has {_bytes(available)} of memory available.",
            f"Pass a smaller --input-size (the size the network was trained at, e.g. 224){fix}.")
    return need


def _channels_stats(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise InputError(f"--{what} has {len(values)} values but the model takes {channels} channels.",
                         f"Give one value, or {channels} comma-separated values.")
    if what == "std" and min(values) <= 0:
        raise InputError(f"--std {','.join(f'{v:g}' for v in values)} has a value that is not positive.",
                         "Standard deviations must be > 0.")
    return values


def random_size(spec: InputSpec, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """H×W for random inputs: the graph's static size, else the export metadata, else ``input_size``."""
    static = spec.static_hw
    if static is not None:
        if input_size is not None and tuple(input_size) != static:
            raise InputError(
                f"--input-size {input_size[0]}x{input_size[1]} does not match the model, whose input is fixed at "
                f"{static[0]}x{static[1]}.", "Leave --input-size out; it is only needed for models with dynamic H and W.")
        return static
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    if spec.metadata_size is not None:
        return spec.metadata_size
    raise InputError(
        "The model's input height and width are dynamic and the file does not record the size it was exported at.",
        "Pass --input-size 224 (or HxW), or give real inputs with --inputs.",
    )


def check_shape(data: np.ndarray, spec: InputSpec, origin: str) -> np.ndarray:
    """Validate ``data`` against the ONNX input (a single C×H×W sample becomes a batch of one).

    Messages quote the shape as given, not as reshaped.
    """
    expected = "×".join("N" if i == 0 and d is None else ("any" if d is None else str(d)) for i, d in enumerate(spec.shape))
    single = data.ndim == 3 and len(spec.shape) == 4
    given = f"shape {tuple(data.shape)}" + (", read as one C×H×W sample" if single else "")
    if single:
        data = data[None]
    if data.ndim != len(spec.shape):
        raise InputError(
            f"{origin} has {given} ({data.ndim} dimensions) but the model's input {spec.name!r} "
            f"is {expected} ({len(spec.shape)} dimensions).",
            "Save the samples as one array (N, C, H, W), e.g. np.save('inputs.npy', batch).",
        )
    if data.shape[0] == 0:
        raise InputError(f"{origin} holds no samples ({given}).", "Give at least one sample.")
    if len(spec.shape) == 4:
        c = spec.shape[1]
        if c is not None and data.shape[1] != c and data.shape[-1] == c:
            axes = "(2, 0, 1)" if single else "(0, 3, 1, 2)"
            raise InputError(
                f"{origin} has {given}, channels last, but the model takes {expected} (channels first).",
                f"Transpose it to {'C×H×W' if single else 'N×C×H×W'} first: np.transpose(x, {axes}).",
            )
    wrong = [i for i, d in enumerate(spec.shape) if i > 0 and d is not None and data.shape[i] != d]
    if wrong:
        names = {1: "channels", 2: "height", 3: "width"}
        what = ", ".join(f"{names.get(i, f'axis {i}')} {data.shape[i]} instead of {spec.shape[i]}" for i in wrong)
        hw = spec.static_hw
        hint = (f"Provide samples of shape (N, {', '.join(str(d) for d in spec.shape[1:])})"
                + (f"; images in a folder are resized to {hw[0]}x{hw[1]} automatically" if hw else "") + ".")
        raise InputError(f"{origin} has {given} ({what}), but the model's input {spec.name!r} is {expected}.", hint)
    if not np.issubdtype(data.dtype, np.floating):
        raise InputError(
            f"{origin} holds {data.dtype} values; the model takes preprocessed float tensors.",
            "Normalise the samples first (float32, as during training), or pass a folder of images with --mean/--std.",
        )
    if not np.isfinite(data).all():
        raise InputError(f"{origin} contains NaN or infinite values.", "Check how the samples were produced.")
    return data


def _from_array(path: Path) -> tuple[np.ndarray, str]:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False), "npy"
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "input" in keys:
                return archive["input"], "npz"
            if len(keys) == 1:
                return archive[keys[0]], "npz"
            raise InputError(
                f"{path} holds {len(keys)} arrays ({', '.join(keys[:8])}) and none is named 'input'.",
                "Save the samples under the key 'input': np.savez(path, input=batch).",
            )
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"Cannot read {path} as a NumPy array file: {summarize_exception(exc)}.",
                         "Write it with np.save (.npy) or np.savez (.npz) and do not pickle objects into it.") from None


def _load_image(path: Path, channels: int, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"Cannot read image {path}: {summarize_exception(exc)}.",
                         "Remove or replace the file; only image files may be in the --inputs folder.") from None
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return array


def _from_images(paths: list[Path], spec: InputSpec, hw: tuple[int, int], mean: tuple[float, ...],
                 std: tuple[float, ...]) -> np.ndarray:
    channels = spec.channels or 3
    if channels not in (1, 3):
        raise InputError(f"The model takes {channels} input channels; images can only feed 1 or 3.",
                         "Pass the samples as a .npy/.npz array instead.")
    mean_v = np.asarray(mean, dtype=np.float32).reshape(channels, 1, 1)
    std_v = np.asarray(std, dtype=np.float32).reshape(channels, 1, 1)
    return np.stack([(_load_image(p, channels, hw) - mean_v) / std_v for p in paths]).astype(np.float32)


def load_inputs(
    source: str | os.PathLike | np.ndarray | Any | None,
    spec: InputSpec,
    samples: int | None = None,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    input_size: tuple[int, int] | None = None,
) -> InputSet:
    """Samples for ``spec`` from ``source`` (``None``: seeded random), at most ``samples`` of them."""
    if samples is not None and samples < 1:
        raise InputError(f"--samples {samples} is not a positive number of samples.", "Use --samples 1 or more.")
    if source is None:
        n = samples or DEFAULT_RANDOM_SAMPLES
        h, w = random_size(spec, input_size)
        channels = spec.channels or 3
        # drawn in float64, kept in float32; the reference also runs a float64 copy of each batch
        check_input_memory(n, channels, (h, w), 8 + 4, "the random inputs", " or fewer --samples")
        data = np.random.default_rng(seed).standard_normal((n, channels, h, w)).astype(np.float32)
        return InputSet(data, "random", seed=seed)
    if not isinstance(source, (str, os.PathLike)):
        try:
            array = np.asarray(source.detach().cpu().numpy() if hasattr(source, "detach") else source)
        except (TypeError, ValueError) as exc:
            raise InputError(f"Cannot use a {type(source).__name__} as inputs ({exc}).",
                             "Pass a NumPy array or a torch tensor of shape (N, C, H, W).") from None
        data = check_shape(array, spec, "The input array")
        available = data.shape[0]
        return InputSet(np.ascontiguousarray(data[:samples], dtype=np.float32), "array", available=available)

    path = Path(source)
    if not path.exists():
        raise InputError(f"Input path {path} does not exist.",
                         "Pass an existing .npy/.npz file or a folder of images to --inputs (or leave it out for random inputs).")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"Folder {path} contains no images ({', '.join(IMAGE_SUFFIXES)}).",
                                 "Put the sample images there, or pass a .npy/.npz array.")
        else:
            files = [path]
        available = len(files)
        files = files[:samples] if samples else files
        channels = spec.channels or 3
        hw = spec.static_hw or input_size or spec.metadata_size
        if hw is None:
            raise InputError("The model's input height and width are dynamic and the file does not record its export size, "
                             "so images cannot be resized.", "Pass --input-size 224 (or HxW).")
        mean_t, std_t = _channels_stats(mean, channels, "mean"), _channels_stats(std, channels, "std")
        check_input_memory(len(files), channels, hw, 4, f"the images of {path} resized to {hw[0]}x{hw[1]}",
                           " or fewer --samples")
        data = _from_images(files, spec, hw, mean_t, std_t)
        return InputSet(data, "images", path, files=[f.name for f in files], mean=mean_t, std=std_t, available=available)
    if path.suffix.lower() not in (".npy", ".npz"):
        raise InputError(f"Cannot tell what {path} holds from its suffix {path.suffix or '(none)'}.",
                         "Pass a .npy or .npz array file, an image, or a folder of images.")
    array, kind = _from_array(path)
    data = check_shape(array, spec, str(path))
    available = int(data.shape[0])
    data = np.ascontiguousarray(data[:samples], dtype=np.float32)
    return InputSet(data, kind, path, available=available)


def batches(count: int, batch: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``count`` samples ``batch`` at a time."""
    return [(start, min(start + batch, count)) for start in range(0, count, batch)]
