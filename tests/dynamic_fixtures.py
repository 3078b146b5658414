"""Helpers shared by the CondConv / DyConv / ODConv tests: the reference layers and a scan.

The reference implementations live in ``sample_models/dynamic_nets.py`` (the published layers'
forward passes, written from the papers' maths with the public projects' names and layouts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dcd_deploy import LoadedModel
from dcd_deploy.inspection import Inspection, inspect_model
from dcd_deploy.load.checkpoint import Checkpoint
from dcd_deploy.lowering import FAMILIES, LayerInfo, Mismatch, find_dynamic_layers
from sample_models import dynamic_nets  # noqa: E402, F401 - the reference layers, for the family tests

DYNAMIC_LAYER_KEYS = {"path", "family", "kind", "c_in", "c_out", "kernel", "stride", "groups", "experts",
                      "attentions", "macs", "forms"}


def recognise(module: nn.Module) -> tuple[str, LayerInfo | Mismatch] | None:
    """(family name, match) of the first family that claims ``module``, as the scan does; None if none."""
    for family in FAMILIES.values():
        if family.looks_dynamic(module):
            return family.name, family.match(module)
    return None


def scan(model: nn.Module) -> tuple[dict[str, LayerInfo], dict[str, Mismatch]]:
    """Every dynamic layer of ``model``: path -> info, and path -> mismatch."""
    found = find_dynamic_layers(model)
    return ({f.path: f.match for f in found if isinstance(f.match, LayerInfo)},
            {f.path: f.match for f in found if not isinstance(f.match, LayerInfo)})


def inspect_network(model: nn.Module, input_size: int = 48, name: str = "custom:test") -> Inspection:
    """``inspect_model`` on an in-memory network (no file)."""
    model = model.eval()
    loaded = LoadedModel(model, name, {}, False, [], Checkpoint(None, model.state_dict(), {"format": "in memory"}))
    return inspect_model(loaded, input_size=input_size)


def relative_error64(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))
