"""The catalogue lists the architectures without torch; an architecture is one module of the zoo."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import dcd_deploy.zoo
from dcd_deploy import load_model
from dcd_deploy.errors import ArchitectureError
from dcd_deploy.load.archinfer import infer_architecture
from dcd_deploy.zoo import catalog as zoo_catalog
from dcd_deploy.zoo import registry
from dcd_deploy.zoo.catalog import catalog, get_entry, list_archs
from dcd_deploy.zoo.registry import create_model, get_arch

HEAVY = ("torch", "onnxruntime")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m dcd_deploy_cli.main ARGS``; its output and every module it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "dcd_deploy_cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, names


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["archs"], ["archs", "--json"]])
def test_help_version_and_archs_import_neither_torch_nor_onnxruntime(args):
    proc, modules = imported_modules(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"click", "dcd_deploy", "dcd_deploy_cli.commands.archs"} <= modules  # the measurement works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy[:5]
    if args[0] == "archs":
        assert "resnet152_dcd" in proc.stdout and "mobilenetv2_dcd" in proc.stdout


def test_archs_json_is_the_catalogue():
    proc, _ = imported_modules("archs", "--json")
    listed = {a["name"]: a for a in json.loads(proc.stdout)["archs"]}
    assert sorted(listed) == list_archs()
    for name, entry in catalog().items():
        assert listed[name] == {"name": name, "family": entry.family, "options": entry.defaults}


@pytest.mark.parametrize("name", list_archs())
def test_the_declared_defaults_are_the_factories_options(name):
    entry, spec = get_entry(name), get_arch(name)
    assert spec.defaults == entry.defaults and spec.family == entry.family
    assert list(inspect.signature(spec.factory).parameters) == list(entry.defaults)
    assert spec.factory.__module__ == entry.module


def test_every_declaring_module_registers_a_probe():
    modules = {entry.module for entry in catalog().values()}
    assert {probe.module for probe in registry.probes()} == modules


# --- adding an architecture is adding one module ---------------------------------------------------

TINY = '''
"""A one-module architecture: declaration, factory and probe."""
import re

from torch import nn

from dcd_deploy.zoo.head import classifier_options, dcd_classifier
from dcd_deploy.zoo.registry import Inference, register_arch, register_probe

ARCHITECTURES = {"tinySUFFIX_dcd": {"family": "tiny", "defaults": {"num_classes": 1000, "width": 8, "dropout": 0.1}}}


@register_arch("tinySUFFIX_dcd")
def tiny_dcd(SIGNATURE):
    net = nn.Module()
    net.stem = nn.Conv2d(3, width, 3, padding=1)
    net.pool = nn.AdaptiveAvgPool2d(1)
    net.classifier = dcd_classifier(width, num_classes, dropout)
    net.forward = lambda x: net.classifier(net.pool(net.stem(x)).flatten(1))
    return net


@register_probe("stem.weight")
def infer_tiny(sd):
    notes = [f"width={sd['stem.weight'].shape[0]} from stem.weight"]
    options = {"width": sd["stem.weight"].shape[0], **classifier_options(sd, 0.1, notes)}
    return Inference("tinySUFFIX_dcd", options, notes)
'''


@pytest.fixture
def zoo_folder(tmp_path, monkeypatch):
    """A second folder of the zoo package (as a plugin folder would be); the catalogue re-read."""
    monkeypatch.setattr(dcd_deploy.zoo, "__path__", [*dcd_deploy.zoo.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_PROBES", dict(registry._PROBES))
    zoo_catalog.catalog.cache_clear()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("dcd_deploy.zoo.tiny")]:
        del sys.modules[name]
    zoo_catalog.catalog.cache_clear()


def write_module(folder, suffix, signature="num_classes, width, dropout"):
    (folder / f"tiny{suffix}.py").write_text(textwrap.dedent(TINY.replace("SUFFIX", suffix).replace("SIGNATURE", signature)))
    return f"tiny{suffix}_dcd"


def test_a_new_module_is_listed_built_inferred_and_loaded(zoo_folder, tmp_path, run_cli):
    name = write_module(zoo_folder, "a")
    assert name in list_archs() and get_entry(name).module == "dcd_deploy.zoo.tinya"
    assert name in run_cli("archs").output
    model = create_model(name, num_classes=5, width=6).eval()
    guess = infer_architecture({k: v.to("meta") for k, v in model.state_dict().items()})
    assert (guess.arch, guess.options) == (name, {"width": 6, "num_classes": 5, "dropout": 0.1})
    torch.save({"state_dict": model.state_dict()}, tmp_path / "tiny.pth")
    loaded = load_model(tmp_path / "tiny.pth")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.inferred and any(note.startswith("width=6 ") for note in loaded.notes)


@pytest.mark.parametrize("signature, fragment", [
    ("num_classes, dropout", "declares the options ['num_classes', 'width', 'dropout']"),
    ("num_classes, width=16, dropout=0.1", "defaults width=16; the declaration says 8"),
])
def test_a_factory_that_disagrees_with_its_declaration_is_refused(zoo_folder, signature, fragment):
    name = write_module(zoo_folder, "b", signature)
    with pytest.raises(TypeError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        get_arch(name)


def test_an_unknown_name_lists_the_declared_ones():
    with pytest.raises(ArchitectureError) as err:
        get_entry("resnet19_dcd")
    assert "resnet18_dcd" in err.value.fix and "mobilenetv2_dcd" in err.value.fix
