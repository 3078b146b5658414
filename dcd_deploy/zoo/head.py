"""The DCD classifier head every zoo network ends with, and how its options are read back.

The reference networks end with ``classifier = Sequential(Dropout(p), DYCls(features, classes))``
when ``p > 0`` and ``Sequential(DYCls(...))`` otherwise, so the head's key index (``classifier.1``
or ``classifier.0``) records whether a Dropout was there; the rate itself is not stored.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError
from .layers import DYCls


def dcd_classifier(features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """``classifier``: optional Dropout, then the DYCls head."""
    head = DYCls(features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), head) if dropout > 0 else nn.Sequential(head)


def head_index(sd: dict[str, torch.Tensor]) -> int | None:
    """``i`` of the state dict's ``classifier.<i>.cls.weight``, or ``None`` when there is none."""
    for key in sd:
        m = re.fullmatch(r"classifier\.(\d+)\.cls\.weight", key)
        if m:
            return int(m.group(1))
    return None


def classifier_options(sd: dict[str, torch.Tensor], default_dropout: float, notes: list[str]) -> dict[str, Any]:
    """``num_classes`` and ``dropout`` read from the head's keys (``default_dropout`` when one was there)."""
    idx = head_index(sd)
    if idx is None:
        raise ArchitectureError(
            "The checkpoint has no DCD classifier head (no key 'classifier.<i>.cls.weight').",
            "If the network is your own, build it with --model package.module:factory.",
        )
    num_classes = sd[f"classifier.{idx}.cls.weight"].shape[0]
    dropout = default_dropout if idx == 1 else 0.0
    notes.append(f"num_classes={num_classes} from classifier.{idx}.cls.weight")
    notes.append(
        f"dropout={'present' if idx == 1 else 'absent'} (head is classifier.{idx}; the rate is not stored and "
        "does not matter at inference)"
    )
    return {"num_classes": num_classes, "dropout": dropout}
