"""Build ``sample_models/digits.npz`` from scikit-learn's bundled handwritten digits.

The digits data set (1,797 greyscale 8×8 images of the digits 0-9, pixel values 0..16) ships
inside the scikit-learn package, so nothing is downloaded. This script is the only place that
needs scikit-learn: it stores the images, the labels and a fixed, seeded, stratified
train/held-out split in a small compressed ``.npz`` that is committed next to it, and
``train.py`` reads only that file.

Contents of the written file:

    images     uint8  (1797, 8, 8)   pixel values 0..16, exactly as scikit-learn gives them
    labels     int64  (1797,)        digit class 0..9
    train_idx  int64  (N_train,)     indices into images/labels, sorted ascending
    test_idx   int64  (N_held_out,)  indices of the held-out split, sorted ascending
    split_seed int64  ()             the seed that produced the split
    test_size  float64 ()            fraction of each class that was held out

Usage (from the repository root):

    python sample_models/make_data.py [--out sample_models/digits.npz] [--seed 0] [--test-size 0.2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "digits.npz"
DEFAULT_SEED = 0
DEFAULT_TEST_SIZE = 0.2


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Return the bundled digits as ``(images uint8 (N, 8, 8), labels int64 (N,))``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images)
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise ValueError("unexpected pixel values: the digits data set should hold integers 0..16")
    return images.astype(np.uint8), np.asarray(digits.target, dtype=np.int64)


def stratified_split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split; returns sorted ``(train_idx, test_idx)`` index arrays."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels), dtype=np.int64)
    train_idx, test_idx = train_test_split(
        indices, test_size=test_size, random_state=seed, shuffle=True, stratify=labels
    )
    return np.sort(train_idx).astype(np.int64), np.sort(test_idx).astype(np.int64)


def build(out: Path, seed: int = DEFAULT_SEED, test_size: float = DEFAULT_TEST_SIZE) -> dict[str, np.ndarray]:
    """Write the data file and return its arrays."""
    images, labels = load_digits_uint8()
    train_idx, test_idx = stratified_split(labels, test_size, seed)
    if np.intersect1d(train_idx, test_idx).size or train_idx.size + test_idx.size != labels.size:
        raise AssertionError("train and held-out splits must partition the data set")
    arrays = {
        "images": images,
        "labels": labels,
        "train_idx": train_idx,
        "test_idx": test_idx,
        "split_seed": np.int64(seed),
        "test_size": np.float64(test_size),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default: %(default)s)")
    parser.add_argument("--test-size", type=float, default=DEFAULT_TEST_SIZE,
                        help="held-out fraction of each class (default: %(default)s)")
    args = parser.parse_args(argv)

    arrays = build(args.out, args.seed, args.test_size)
    labels = arrays["labels"]
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    print(f"images {arrays['images'].shape} {arrays['images'].dtype}, "
          f"train {arrays['train_idx'].size}, held-out {arrays['test_idx'].size}")
    print("held-out per class:", np.bincount(labels[arrays["test_idx"]], minlength=10).tolist())


if __name__ == "__main__":
    main()
