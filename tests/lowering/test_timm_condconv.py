"""timm's own CondConv classes (``CondConv2d``, ``CondConvResidual``): recognition and a dynamic-batch export.

timm is the most used CondConv code, but ``import timm`` imports torchvision, whose CPU build for
this torch is not on the package registry here. The files holding the classes need neither: this
test installs light parent packages ``timm`` and ``timm.models`` in ``sys.modules`` whose
``__path__`` is timm's installed folder (``importlib.util.find_spec`` finds it without running
``timm/__init__.py``), so ``timm.layers`` (its real ``__init__``) and
``timm.models._efficientnet_blocks`` import as they are. The one torchvision name on that chain,
``torchvision.ops.misc.FrozenBatchNorm2d`` (used by timm's BatchNorm-freezing helpers, never by
these blocks), is stubbed by a class that refuses to be built. When that chain fails (another timm
version), ``timm.layers`` becomes a light package too and only ``CondConv2d`` is tested. Every
``sys.modules`` entry made here is removed after the module's tests. Without timm's files (CI
installs them with ``pip install --no-deps timm``) every test skips, saying why.

Code path exercised: timm's non-TF padding (``pad_type=''``, ``dynamic_padding=False``: the
``F.conv2d`` branch, as in ``efficientnet_cc_b0_4e``); TF "same" padding with stride 2 (the
``conv2d_same`` branch) is a structural negative.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from dynamic_fixtures import inspect_network, recognise
from torch import nn

from dcd_deploy import export
from dcd_deploy.lowering import FAMILIES, LayerFamily, LayerInfo, Mismatch, find_dcd_layers, relative_error
from dcd_deploy.runtime.session import create_session
from dcd_deploy.zoo.calibration import calibrate_batchnorm

SIZE = 32
INSTALL_HINT = "install its files with `pip install --no-deps timm`"


@dataclass
class Timm:
    """timm's CondConv classes as loaded here, and how."""

    version: str
    CondConv2d: type
    blocks: types.ModuleType | None  # timm.models._efficientnet_blocks, None when its import chain failed
    why_no_blocks: str | None
    stubbed: tuple[str, ...]  # torchvision names replaced by stubs


def _is_ours(name: str) -> bool:
    return name.split(".")[0] in ("timm", "torchvision")


def _take_modules() -> dict[str, types.ModuleType]:
    """Remove and return every timm / torchvision entry of ``sys.modules``."""
    return {name: sys.modules.pop(name) for name in [n for n in sys.modules if _is_ours(n)]}


def _light_package(name: str, folder: Path) -> None:
    """A package object for ``name`` whose submodules load from ``folder``, without its ``__init__``."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(folder)]
    module.__path__ = [str(folder)]
    module.__package__ = name
    sys.modules[name] = module


class _FrozenBatchNorm2dStub(nn.Module):
    """Stands for torchvision's FrozenBatchNorm2d in ``isinstance`` checks; never built by these tests."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed: this FrozenBatchNorm2d is a test stub")


def _stub_torchvision() -> tuple[str, ...]:
    names = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
    for name in names:
        _light_package(name, Path("/nonexistent") / name)
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2dStub
    return ("torchvision.ops.misc.FrozenBatchNorm2d",)


def _load(root: Path, version: str) -> Timm:
    """timm's classes: the real ``timm.layers`` and blocks if possible, else ``CondConv2d`` alone."""
    _light_package("timm", root)
    _light_package("timm.models", root / "models")
    stubbed = () if importlib.util.find_spec("torchvision") is not None else _stub_torchvision()
    try:
        blocks = importlib.import_module("timm.models._efficientnet_blocks")
        conv = importlib.import_module("timm.layers.cond_conv2d")
        return Timm(version, conv.CondConv2d, blocks, None, stubbed)
    except ImportError as exc:
        why = f"timm {version}'s efficientnet blocks need more than timm.layers ({type(exc).__name__}: {exc})"
    _take_modules()
    _light_package("timm", root)
    _light_package("timm.layers", root / "layers")
    try:
        conv = importlib.import_module("timm.layers.cond_conv2d")
    except ImportError as exc:
        pytest.skip(f"timm {version}'s cond_conv2d.py cannot be imported without timm/__init__.py: {exc}")
    return Timm(version, conv.CondConv2d, None, why, ())


@contextlib.contextmanager
def _timm_classes() -> Iterator[Timm]:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"timm is not installed: {INSTALL_HINT}")
    root = Path(spec.submodule_search_locations[0])
    if not (root / "layers" / "cond_conv2d.py").is_file():
        pytest.skip(f"timm at {root} has no layers/cond_conv2d.py")
    saved = _take_modules()
    try:
        yield _load(root, importlib.metadata.version("timm"))
    finally:
        _take_modules()
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def timm() -> Iterator[Timm]:
    with _timm_classes() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def blocks(timm: Timm) -> types.ModuleType:
    if timm.blocks is None:
        pytest.skip(timm.why_no_blocks)
    return timm.blocks


# --- CondConv2d alone -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(in_channels=16, out_channels=32, kernel_size=3, stride=2, num_experts=4),
    dict(in_channels=24, out_channels=24, kernel_size=5, groups=24, bias=True, num_experts=8),
    dict(in_channels=8, out_channels=12, kernel_size=1, bias=True, num_experts=4),
    dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, padding="same", num_experts=4),
])
def test_timm_condconv2d_is_recognised(timm, kw):
    layer = timm.CondConv2d(**kw)
    assert not layer.dynamic_padding  # timm's static padding: the F.conv2d branch
    family, info = recognise(layer)
    assert family == "condconv" and isinstance(info, LayerInfo), info
    k = kw["kernel_size"]
    assert (info.kind, info.c_in, info.c_out, info.kernel) == ("CondConv2d", kw["in_channels"], kw["out_channels"], k)
    assert (info.stride, info.padding, info.groups) == (kw.get("stride", 1), k // 2, kw.get("groups", 1))
    assert (info.experts, info.bias, info.attentions) == (kw["num_experts"], kw.get("bias", False), ("routing",))


def test_timm_tf_same_padding_is_named(timm):
    """TF 'same' padding with stride 2 depends on the input size: timm pads in forward; reported, not lowered."""
    layer = timm.CondConv2d(16, 16, 3, stride=2, padding="same", num_experts=4)
    assert layer.dynamic_padding
    family, info = recognise(layer)
    assert family == "condconv" and isinstance(info, Mismatch)
    assert "TF-style 'same' padding" in " ".join(info.reason.split())


# --- a network of timm's CondConvResidual blocks ----------------------------------------------------------


class RoutedCondConv(nn.Module):
    """timm's CondConv2d with the routing CondConvResidual computes (sigmoid of a Linear on the pooled input)."""

    def __init__(self, conv_cls: type, c_in: int, c_out: int, kernel: int, groups: int = 1, experts: int = 4):
        super().__init__()
        self.routing_fn = nn.Linear(c_in, experts)
        self.conv = conv_cls(c_in, c_out, kernel, groups=groups, bias=True, num_experts=experts)

    def forward(self, x):
        routing = torch.sigmoid(self.routing_fn(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))
        return self.conv(x, routing)


def timm_condconv_net(timm: Timm, num_classes: int = 10) -> nn.Module:
    """An efficientnet_cc-like network: stem, three timm CondConvResidual blocks (SE, depthwise experts),
    two routed CondConv2d with bias (grouped 3×3 with 8 experts, 1×1 head), classifier; BatchNorms calibrated."""
    b = timm.blocks
    se = partial(b.SqueezeExcite, rd_ratio=0.25)
    block = partial(b.CondConvResidual, act_layer=nn.SiLU, se_layer=se, num_experts=4)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU(),
        block(16, 16, dw_kernel_size=3, exp_ratio=4),
        block(16, 24, dw_kernel_size=5, stride=2, exp_ratio=6),
        block(24, 24, dw_kernel_size=3, exp_ratio=6),
        RoutedCondConv(timm.CondConv2d, 24, 32, 3, groups=2, experts=8), nn.SiLU(),
        RoutedCondConv(timm.CondConv2d, 32, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
    return calibrate_batchnorm(net, SIZE)


def _condconvs(timm: Timm, model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, timm.CondConv2d)}


def test_every_timm_condconv_of_the_network_is_recognised(timm, blocks):
    model = timm_condconv_net(timm)
    convs = _condconvs(timm, model)
    assert len(convs) == 11 and not any(m.dynamic_padding for m in convs.values())
    found = {f.path: f for f in find_dcd_layers(model)}
    assert set(found) == set(convs)
    for path, conv in convs.items():
        info = found[path].match
        assert found[path].family == "condconv" and isinstance(info, LayerInfo), (path, info)
        assert (info.c_in, info.c_out, info.kernel, info.stride) == \
            (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0]), path
        assert (info.groups, info.experts, info.bias) == (conv.groups, conv.num_experts, conv.bias is not None), path
    depthwise = [p for p, f in found.items() if f.match.groups == f.match.c_in == f.match.c_out > 1]
    assert depthwise == ["3.conv_dw", "4.conv_dw", "5.conv_dw"]


def test_inspect_lists_the_timm_condconvs(timm, blocks):
    model = timm_condconv_net(timm)
    data = inspect_network(model, SIZE).to_dict()
    assert data["dcd_layers"] == [] and data["unmatched_layers"] == []
    layers = {layer["path"]: layer for layer in data["dynamic_layers"]}
    assert set(layers) == set(_condconvs(timm, model))
    assert {(layer["family"], layer["kind"]) for layer in layers.values()} == {("condconv", "CondConv2d")}
    assert (layers["4.conv_dw"]["kernel"], layers["4.conv_dw"]["stride"], layers["4.conv_dw"]["groups"]) == (5, 2, 96)
    assert layers["6.conv"]["experts"] == 8 and layers["6.conv"]["groups"] == 2
    assert all(layer["macs"] > 0 and layer["attentions"] == ["routing"] for layer in layers.values())


# --- one dynamic-batch ONNX file, exact at batch 1 and 3 ----------------------------------------------------


def _condconv_lowering_exists() -> bool:
    return type(FAMILIES["condconv"]).lower is not LayerFamily.lower


def _batch_dim(path: Path) -> onnx.TensorShapeProto.Dimension:
    return onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]


@pytest.mark.parametrize("target, form", [("cpu", "auto"), ("cuda", "auto"), ("cuda", "unfold")])
def test_timm_network_exports_one_dynamic_batch_file(timm, blocks, tmp_path, target, form):
    """On --target cuda with no control flow anywhere (CUDA graphs, tract)."""
    if not _condconv_lowering_exists():
        pytest.skip("the condconv family has no lowering yet")
    model = timm_condconv_net(timm)
    result = export(model, tmp_path / "timm_cc.onnx", input_size=SIZE, target=target, form=form)
    assert result, result.render()
    if target == "cuda":
        graph = onnx.load(str(result.path)).graph
        ops = [n.op_type for n in graph.node] + [n.op_type for node in graph.node for a in node.attribute
                                                  if a.HasField("g") for n in a.g.node]
        assert not {"Loop", "If", "Scan"} & set(ops)
    assert [p.name for p in tmp_path.iterdir()] == ["timm_cc.onnx"]
    lines = {line.path: line for line in result.layers}
    assert set(lines) == set(_condconvs(timm, model)) and all(line.lowered for line in lines.values())
    assert _batch_dim(result.path).dim_param and not _batch_dim(result.path).dim_value
    session = create_session(result.path)
    model64 = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            ref64, out32 = model64(x.double()), model(x)
        ort_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert ort_out.shape == ref64.shape and np.isfinite(ort_out.numpy()).all()
        noise = relative_error(out32, ref64)  # the timm network's own float32 error
        bound = max(1e-4, 10 * noise)
        err = relative_error(ort_out, ref64)
        assert noise <= 1e-4, f"batch {batch}: timm float32 vs float64 {noise:.2e}"
        assert err <= bound, f"batch {batch}: ONNX Runtime relative error {err:.2e} > {bound:.2e} (float32 {noise:.2e})"
