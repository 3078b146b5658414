"""Write ``digits_heldout.npz`` (the 360 held-out digits, for ``dcd-deploy evaluate``) and
``digits_calibration.npz`` (the first 64 training digits, for ``export --int8 --calibration``).

The file holds the raw uint8 8×8 images of ``digits.npz``'s ``test_idx`` (values 0..16), their
int64 labels, and ``preprocess``: the JSON recipe of ``train.py``'s :func:`preprocess` (÷16,
bilinear to 48×48 with align_corners=False, 3 channels, the training mean/std from
``settings.json``). ``evaluate`` applies the recipe and gets exactly the float32 inputs
``train.py`` evaluates on, from about 10 kB instead of megabytes. The calibration file holds
images and recipe only (no labels).

    python sample_models/make_heldout.py        # from the repository root
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train import load_digits_npz, load_settings

CALIBRATION = 64  # training images for int8 calibration (digits_calibration.npz)


def recipe(input_cfg: dict) -> dict:
    size = int(input_cfg["size"])
    return {"pixel_max": input_cfg["pixel_max"], "size": [size, size], "channels": int(input_cfg["channels"]),
            "mean": input_cfg["mean"], "std": input_cfg["std"], "resize": "bilinear, align_corners=False"}


def main() -> None:
    settings = load_settings(HERE / "settings.json")
    data = load_digits_npz(HERE / settings["data"])
    out = HERE / "digits_heldout.npz"
    np.savez_compressed(out, images=data.images[data.test_idx], labels=data.labels[data.test_idx],
                        preprocess=np.array(json.dumps(recipe(settings["input"]))))
    print(f"wrote {out.name}: {len(data.test_idx)} images, {out.stat().st_size:,} bytes")
    calibration = HERE / "digits_calibration.npz"
    np.savez_compressed(calibration, images=data.images[data.train_idx[:CALIBRATION]],
                        preprocess=np.array(json.dumps(recipe(settings["input"]))))
    print(f"wrote {calibration.name}: the first {CALIBRATION} training images, {calibration.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
