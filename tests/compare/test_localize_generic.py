"""``parity --localize`` on a network of the generic family (WeightNet): the first diverging layer.

The export is faithful; the kernel generator of ONE lowered layer is then changed in the ONNX file,
and localisation must name that layer (its input still matches PyTorch, its output does not), for
each lowered form.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_localize_families import SAMPLES, localized, perturb  # noqa: E402

from dcd_deploy.compare.parity import check_parity  # noqa: E402
from dcd_deploy.exporting.pipeline import export  # noqa: E402
from sample_models import generic_nets as gn  # noqa: E402

LAYER = "blocks.1.conv1"


def weightnet() -> nn.Module:
    torch.manual_seed(0)
    return gn.weightnet_resnet18(10, width=16, layers=(1, 1, 1, 1)).eval()


@pytest.mark.parametrize("form", ["unfold", "loop", "folded"])
def test_localize_names_the_changed_generic_layer(form, tmp_path):
    model = weightnet()
    good = tmp_path / f"wn_{form}.onnx"
    result = export(model, good, input_size=32, form=form)
    assert {row.form for row in result.report.lowered} == {form}
    assert check_parity(good, model, samples=SAMPLES), "the faithful export failed parity"
    names = [i.name for i in onnx.load(good).graph.initializer if i.name.startswith(LAYER + ".") and "wn_fc2" in i.name]
    assert names, "the layer's kernel generator is not an initializer of the file"
    loc = localized(perturb(good, tmp_path / f"wn_{form}_bad.onnx", names[0]), model)
    first = loc.first
    assert first is not None and first.path == LAYER, loc.render()
    assert first.input_error < loc.threshold < first.output_error
