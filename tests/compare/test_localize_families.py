"""``parity --localize`` on CondConv / DyConv / ODConv networks: the first diverging dynamic layer.

Each export is faithful; one expert weight of ONE lowered layer is then changed in the ONNX file
(as ``tests/parity_fixtures.py`` does for DCD weights), and localisation must name that layer:
its input still matches PyTorch (so the layers before it are clean) and its output does not.
Every lowered form is exercised (``kernel``, ``experts``, ``loop``), float32 and float16 files, a
dynamic-size file, and the CLI with ``--model`` on a bundled sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from family_nets import NETWORKS, REPO_ROOT, SIZE, build
from onnx import numpy_helper

from dcd_deploy.compare.parity import check_parity
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.lowering import FAMILIES

SAMPLES = 4


def expert_initializer(path: Path, layer: str) -> str:
    """The initializer holding the experts of a lowered layer, whichever form it got."""
    names = {i.name for i in onnx.load(path).graph.initializer}
    found = [n for n in (f"{layer}.form.weight", f"{layer}.form.conv.weight") if n in names]
    assert found, f"no expert weight of {layer} among {sorted(n for n in names if n.startswith(layer))}"
    return found[0]


def perturb(src: Path, dst: Path, name: str, factor: float = 1.3) -> Path:
    """``src`` with the first quarter of initializer ``name`` scaled by ``factor`` (its dtype kept): the first
    of 4 experts, whether they are stacked (K, ...) or side by side in one convolution's outputs."""
    model = onnx.load(src)
    init = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()
    flat = array.reshape(-1)
    flat[: flat.size // 4] *= factor
    init.CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, dst)
    return dst


def localized(onnx_path: Path, model: torch.nn.Module, **fields):
    result = check_parity(onnx_path, model, samples=SAMPLES, localize=True, **fields)
    assert not result, "the perturbed file passed parity"
    (loc,) = result.localizations
    return loc


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("localize_families")


@pytest.mark.parametrize("form", ["auto", "kernel", "experts", "unfold", "loop"])
@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_localize_names_the_changed_dynamic_layer(family, form, folder):
    model = build(family)
    layer = NETWORKS[family][2]
    good = folder / f"{family}_{form}.onnx"
    result = export(model, good, input_size=SIZE, form=form)
    assert check_parity(good, model, samples=SAMPLES), "the faithful export failed parity"
    row = next(row for row in result.report.lowered if row.path == layer)
    if form in FAMILIES[row.family].forms(row.info, row.in_shape):  # else the family's default form
        assert row.form == form
    name = expert_initializer(good, layer)
    loc = localized(perturb(good, folder / f"{family}_{form}_bad.onnx", name), model)
    first = loc.first
    assert first is not None and first.path == layer, loc.render()
    assert first.input_error < loc.threshold < first.output_error
    assert [w["initializer"] for w in loc.weight_diffs] == [name]
    before = loc.layers[: [row.path for row in loc.layers].index(layer)]
    assert all(row.output_error < loc.threshold for row in before)
    text = " ".join(loc.render().split())
    assert f"first diverging dynamic layer: {layer}" in text
    assert "receives the same input but computes a different output" in text


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_localize_float16_file(family, folder):
    """A float16 file: the faithful one passes at ``atol`` (well above its float16 rounding, about 1e-2
    here), the changed one fails at that tolerance, and localisation names the changed layer."""
    model = build(family)
    layer = NETWORKS[family][2]
    good = folder / f"{family}_fp16.onnx"
    export(model, good, input_size=SIZE, fp16=True)
    name = expert_initializer(good, layer)
    assert {i.data_type for i in onnx.load(good).graph.initializer if i.name == name} == {onnx.TensorProto.FLOAT16}
    tolerance = {"atol": 0.04, "rtol": 0.0}
    assert check_parity(good, model, samples=SAMPLES, **tolerance)
    loc = localized(perturb(good, folder / f"{family}_fp16_bad.onnx", name, factor=20.0), model, **tolerance)
    assert loc.first is not None and loc.first.path == layer, loc.render()
    assert loc.first.input_error < loc.threshold < loc.first.output_error
    assert [w["initializer"] for w in loc.weight_diffs] == [name]


@pytest.mark.parametrize("family", ["condconv", "odconv"])
def test_localize_dynamic_size_file_at_another_size(family, folder):
    model = build(family)
    layer = NETWORKS[family][2]
    good = folder / f"{family}_dynsize.onnx"
    export(model, good, input_size=SIZE, dynamic_size=True)
    bad = perturb(good, folder / f"{family}_dynsize_bad.onnx", expert_initializer(good, layer))
    loc = localized(bad, model, input_size=(40, 56))
    assert loc.first is not None and loc.first.path == layer, loc.render()


def test_localize_a_changed_static_op_before_the_dynamic_layers(folder):
    """The stem is changed: the first dynamic layer's INPUT already differs, and the verdict says so."""
    model = build("dyconv")
    good = folder / "dyconv_stem.onnx"
    export(model, good, input_size=SIZE)
    stem = next(n.input[1] for n in onnx.load(good).graph.node if n.op_type == "Conv")
    loc = localized(perturb(good, folder / "dyconv_stem_bad.onnx", stem), model)
    assert loc.first is not None and loc.first.path == "layer1.0.conv1" and loc.previous is None
    assert loc.first.input_error > loc.threshold
    assert "already differs" in loc.verdict and "non-dynamic" in loc.verdict


def test_localize_on_a_faithful_family_export_finds_nothing(folder):
    model = build("condconv")
    good = folder / "condconv_ok.onnx"
    export(model, good, input_size=SIZE)
    result = check_parity(good, model, samples=2, localize=True)
    assert result and not result.localizations


def test_cli_localize_on_the_condconv_sample(run_cli, tmp_path):
    """The bundled CondConv sample through ``--model``: export, change one expert, ``parity --localize``."""
    loading = ["--model", "sample_models.dynamic_nets:efficientnet_cc", "--model-arg", "num_classes=10",
               "--model-arg", "width_mult=0.25", "--model-arg", "depth_mult=0.25", "--model-arg", "num_features=256",
               "--model-arg", "drop_rate=0.1"]
    checkpoint = REPO_ROOT / "sample_models" / "efficientnet_cc_digits.pth"
    good = tmp_path / "cc.onnx"
    result = run_cli("export", checkpoint, "-o", good, "--input-size", SIZE, "--quiet", *loading)
    assert result.exit_code == 0, result.output
    layer = "blocks.5.0.conv_dw"
    bad = perturb(good, tmp_path / "cc_bad.onnx", expert_initializer(good, layer))
    out = tmp_path / "parity.json"
    inputs = REPO_ROOT / "sample_models" / "inputs.npz"
    result = run_cli("parity", bad, checkpoint, "--inputs", inputs, "--localize", "--json", out, *loading)
    assert result.exit_code == 1, result.output
    assert f"first diverging dynamic layer: {layer}" in " ".join(result.output.split())
    loc = json.loads(out.read_text())["localization"][0]
    assert loc["first_diverging_layer"]["path"] == layer
    assert np.isfinite(loc["first_diverging_layer"]["output_error"])
