"""The architecture zoo: every registered network survives a reference-format checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from dcd_deploy import load_model
from dcd_deploy.errors import ArchitectureError
from dcd_deploy.load.archinfer import expected_shapes
from dcd_deploy.zoo import create_model, get_arch, list_archs

ALL_ARCHS = ["mobilenetv2_dcd", "resnet18_dcd", "resnet34_dcd", "resnet50_dcd", "resnet101_dcd", "resnet152_dcd"]


def test_registry_lists_the_published_architectures():
    assert sorted(list_archs()) == sorted(ALL_ARCHS)
    assert set(get_arch("mobilenetv2_dcd").defaults) == {"num_classes", "width_mult", "dropout", "fc_squeeze"}
    for arch in ALL_ARCHS[1:]:
        assert set(get_arch(arch).defaults) == {"num_classes", "dropout"}


@pytest.mark.parametrize("arch", list_archs())
def test_random_init_reference_checkpoint_loads_strict_with_identical_outputs(arch, tmp_path, calibrated_model, save_checkpoint):
    model = calibrated_model(arch, input_size=64, num_classes=10)
    path = save_checkpoint(model, tmp_path / f"{arch}.pth", fmt="reference", arch=arch)

    loaded = load_model(path)  # nothing given: architecture and options inferred, loaded strict

    assert loaded.arch == arch and loaded.inferred
    assert loaded.options["num_classes"] == 10
    assert loaded.options["dropout"] == get_arch(arch).defaults["dropout"]  # head is classifier.1
    assert loaded.checkpoint.format == "reference training checkpoint"
    assert type(loaded.model) is type(model) and not loaded.model.training
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model(x), loaded.model(x)
    assert torch.isfinite(expected).all()
    assert expected.std() > 1e-3 and not torch.allclose(expected[0], expected[1])  # non-trivial outputs
    assert torch.equal(got, expected)


def test_resnet_uses_global_average_pool_so_other_input_sizes_work():
    model = create_model("resnet18_dcd", num_classes=5).eval()
    assert isinstance(model.avgpool, torch.nn.AdaptiveAvgPool2d)
    assert not list(model.avgpool.parameters()) and not list(model.avgpool.buffers())  # keys unchanged
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5)


@pytest.mark.parametrize("dropout, head", [(0.2, "classifier.1"), (0.0, "classifier.0")])
def test_dropout_decides_the_head_key_index(dropout, head):
    sd = expected_shapes("mobilenetv2_dcd", {"dropout": dropout})  # keys and shapes, built on meta
    assert f"{head}.cls.weight" in sd
    assert not any(k.startswith("classifier.") and not k.startswith(head + ".") for k in sd)


def test_building_with_an_unknown_option_names_the_valid_ones():
    with pytest.raises(ArchitectureError, match="no option 'width_mult'.*dropout, num_classes"):
        create_model("resnet18_dcd", width_mult=0.5)
    with pytest.raises(ArchitectureError, match="Unknown architecture 'resnet19_dcd'.*resnet18_dcd"):
        create_model("resnet19_dcd")
