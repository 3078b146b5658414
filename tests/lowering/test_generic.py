"""The generic family (the batch-folded grouped convolution): must / must-not recognise, lower, export.

Networks written from the papers (KernelWarehouse, WeightNet) and an in-house variant live in
``sample_models/generic_nets.py``; here they are built small (width 8–16, input 32). Exactness is
the export issue's bound against the float64 evaluation of the original network: relative error
≤ max(1e-4, 10 × the network's own float32 error).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from dynamic_fixtures import DYNAMIC_LAYER_KEYS, inspect_network, relative_error64
from torch import nn

from dcd_deploy.errors import LoweringError
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.lowering import FAMILIES, LayerInfo, Mismatch, find_dynamic_layers, lower_model, relative_error
from dcd_deploy.exporting.folded import LADDER
from dcd_deploy.lowering.families.generic import GenericLayerInfo, LoweredFoldedConv
from dcd_deploy.lowering.static_twin import static_twin
from sample_models import dynamic_nets as dn
from sample_models import generic_nets as gn

SIZE = 32


def small(name: str) -> nn.Module:
    torch.manual_seed(0)
    nets = {
        "kernelwarehouse": lambda: gn.kw_resnet18(10, width=16, layers=(1, 1, 1, 1), temperature=0.3),
        "kernelwarehouse50": lambda: gn.kw_resnet50(10, width=8, layers=(1, 1, 1, 1), temperature=0.0),
        "weightnet": lambda: gn.weightnet_resnet18(10, width=16, layers=(1, 1, 1, 1)),
        "variant": lambda: gn.variant_net(10, width=16),
    }
    model = nets[name]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def image(batch: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def generic_layers(model: nn.Module, size: int = SIZE) -> tuple[dict[str, LayerInfo], dict[str, Mismatch]]:
    found = find_dynamic_layers(model, image(1, size=size))
    return ({f.path: f.match for f in found if f.family == "generic" and isinstance(f.match, LayerInfo)},
            {f.path: f.match for f in found if f.family == "generic" and isinstance(f.match, Mismatch)})


def bound(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        return ref, max(1e-4, 10 * relative_error(model(x), ref))


def assert_onnx_exact(path, model: nn.Module, batches=(1, 3, 8), size: int = SIZE) -> None:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in batches:
        x = image(batch, seed=10 + batch, size=size)
        ref, tol = bound(model, x)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        err = relative_error(got, ref)
        assert got.shape == ref.shape and err <= tol, f"batch {batch}: {err:.2e} > {tol:.2e}"


# ------------------------------------------------------------------------------------------ recognition


def test_every_kernelwarehouse_convolution_is_recognised_with_its_geometry():
    infos, mismatches = generic_layers(small("kernelwarehouse"))
    assert not mismatches and len(infos) == 8
    assert all(i.kind == "KWConv2d" and i.kernel == 3 and i.groups == 1 for i in infos.values())
    first = infos["layers.1.0.conv1"]
    assert (first.c_in, first.c_out, first.stride, first.padding) == (16, 32, 2, 1)
    assert FAMILIES["generic"].paper == "generic"


def test_kernelwarehouse_bottlenecks_with_1x1_cells_are_recognised():
    infos, mismatches = generic_layers(small("kernelwarehouse50"))
    assert not mismatches and len(infos) == 12
    assert sorted({i.kernel for i in infos.values()}) == [1, 3]


def test_weightnet_with_its_squeeze_computed_outside_the_layer_is_recognised():
    infos, _ = generic_layers(small("weightnet"))
    assert len(infos) == 8 and {i.kind for i in infos.values()} == {"WeightNetConv"}


def test_the_variant_reveals_its_groups_stride_dilation_and_conv1d():
    infos, _ = generic_layers(small("variant"))
    d1, d2, d3 = infos["dyn1"], infos["dyn2"], infos["dyn3"]
    assert (d1.c_in, d1.c_out, d1.stride, d1.groups, d1.dims) == (16, 32, 2, 2, 2)
    assert (d2.dilation, d2.padding, d2.groups) == (2, 2, 1)
    assert (d3.dims, d3.stride, d3.groups, d3.kernel) == (1, 2, 2, 3)
    assert d1.calls[0][1].bias and d3.calls[0][1].bias and not d2.calls[0][1].bias  # dyn2 adds its bias after


def test_inspect_json_lists_generic_layers_with_what_the_call_reveals():
    report = inspect_network(small("variant"), input_size=SIZE).to_dict()
    layers = {layer["path"]: layer for layer in report["dynamic_layers"]}
    assert set(layers) == {"dyn1", "dyn2", "dyn3"} and report["unmatched_layers"] == []
    d1 = layers["dyn1"]
    assert set(d1) >= DYNAMIC_LAYER_KEYS and d1["family"] == "generic"
    assert (d1["c_in"], d1["c_out"], d1["kernel"], d1["stride"], d1["groups"]) == (16, 32, 3, 2, 2)
    # the convolution (C_out · C_in/g · k² · H'W') and the kernel and bias mixes (3 experts) at batch 1
    assert d1["macs"] == 32 * 8 * 9 * 16 * 16 + 3 * (32 * 8 * 9 + 32)
    json.dumps(report)


def test_named_families_take_precedence():
    model = dn.dy_resnet(layers=(1, 1, 1, 1), num_classes=10, width=8).eval()
    found = find_dynamic_layers(model, image(1))
    assert found and {f.family for f in found} == {"dyconv"}


# ------------------------------------------------------------------------------------------ must not


class PerSampleLoop(nn.Module):
    """A computed kernel applied by a Python loop over the samples."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.gen = nn.Linear(c, c * c * 9)
        self.c = c

    def forward(self, x):
        w = self.gen(x.mean((2, 3))).view(-1, self.c, self.c, 3, 3)
        return torch.cat([F.conv2d(x[i:i + 1], w[i], padding=1) for i in range(x.shape[0])])


class EinsumConv(nn.Module):
    """A per-sample kernel applied with unfold and einsum, no convolution call."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.gen = nn.Linear(c, c * c * 9)
        self.c = c

    def forward(self, x):
        n, c, h, w = x.shape
        k = self.gen(x.mean((2, 3))).view(n, c, c * 9)
        cols = F.unfold(x, 3, padding=1)
        return torch.einsum("noi,nil->nol", k, cols).view(n, c, h, w)


class BatchKernel(nn.Module):
    """A kernel computed from the whole batch (its mean), shared by every sample."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.gen = nn.Linear(c, c * c * 9)
        self.c = c

    def forward(self, x):
        w = self.gen(x.mean((0, 2, 3))).view(self.c, self.c, 3, 3)
        return F.conv2d(x, w, padding=1)


class StaticFolded(nn.Module):
    """The batch folded into the channels, but a parameter as the weight: no dynamic convolution."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3))
        self.c = c

    def forward(self, x):
        n = x.shape[0]
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), self.weight.repeat(n, 1, 1, 1), None, 1, 1, 1, n)
        return y.view(n, self.c, *y.shape[2:])


def with_stem(layer: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), layer, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.mark.parametrize("layer, reason", [
    (PerSampleLoop(), "PerSampleLoop computes its convolution weight from the input, but it runs one convolution per "
                      "sample (2 calls at batch 2, 3 at batch 3: a Python loop over the batch)"),
    (BatchKernel(), "BatchKernel computes its convolution weight from the input, but it convolves the whole batch "
                    "with one kernel computed from the input"),
    (EinsumConv(), "EinsumConv computes a convolution from unfolded patches and an input-dependent kernel with "
                   "einsum/matmul"),
])
def test_computed_weights_used_otherwise_are_named_with_their_reason(layer, reason, tmp_path):
    model = with_stem(layer)
    infos, mismatches = generic_layers(model)
    assert not infos and list(mismatches) == ["1"]
    assert reason in mismatches["1"].reason
    lowered, report = lower_model(model, image(1))
    assert not report and reason in report.not_lowered[0].reason
    with pytest.raises(LoweringError) as info:
        export(model, tmp_path / "never_written.onnx", input_size=SIZE)
    assert reason in " ".join(info.value.message.split()) and not list(tmp_path.iterdir())


def test_a_batch_folded_convolution_with_a_static_weight_is_left_untouched():
    model = with_stem(StaticFolded())
    assert find_dynamic_layers(model, image(1)) == []
    lowered, report = lower_model(model, image(1))
    assert report.layers == [] and not any(isinstance(m, LoweredFoldedConv) for m in lowered.modules())


def test_a_plain_network_is_not_claimed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2)).eval()
    assert find_dynamic_layers(model, image(1)) == []


# ------------------------------------------------------------------------------------------ lowering


@pytest.mark.parametrize("form", ["unfold", "loop", "folded"])
@pytest.mark.parametrize("name", ["kernelwarehouse", "weightnet", "variant"])
def test_lowered_forms_are_exact_in_float64_at_batch_1_3_8(name, form):
    model = small(name)
    lowered, report = lower_model(model, image(1), form)
    assert report and {layer.form for layer in report.lowered} == {form}
    assert all(layer.check_error is not None and layer.check_error <= 1e-4 for layer in report.lowered)
    assert sum(isinstance(m, LoweredFoldedConv) for m in lowered.modules()) == len(report.lowered)
    for batch in (1, 3, 8):
        x = image(batch, seed=batch).double()
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(x)
            out = copy.deepcopy(lowered).double()(x)
        assert relative_error64(out, ref) < 1e-12


class Variant(nn.Module):
    """One VariantConv with its routing, as a network."""

    def __init__(self, dims: int = 2, **kw):
        super().__init__()
        self.dims = dims
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.route = gn.Squeeze(8, 3)
        self.dyn = gn.VariantConv(8, 8, dims=dims, **kw)

    def forward(self, x):
        x = self.stem(x)
        if self.dims == 1:
            x = x.flatten(2)
        return self.dyn(x, self.route(x)).flatten(1).mean(1, keepdim=True) + self.dyn(x, self.route(x))[:, :2].flatten(1)


VARIANTS = {
    "view, bias in the call": dict(fold="view", bias="call"),
    "reshape(1, -1), bias after": dict(fold="reshape", bias="after"),
    "no bias, groups 2, stride 2": dict(bias=None, groups=2, stride=2),
    "dilation 2, 5x5": dict(k=5, dilation=2),
    "conv1d, groups 4, stride 2": dict(dims=1, groups=4, stride=2, bias="call"),
    "conv1d, dilation 2, bias after": dict(dims=1, dilation=2, bias="after"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_idiom_variants_export_exactly_at_batch_1_3_8(variant, tmp_path):
    torch.manual_seed(0)
    model = Variant(**VARIANTS[variant]).eval()
    infos, _ = generic_layers(model)
    assert list(infos) == ["dyn"]
    path = tmp_path / "variant.onnx"
    result = export(model, path, input_size=SIZE)
    assert result and "1/1 dynamic layers lowered" in result.report.summary()
    assert_onnx_exact(path, model, batches=(1, 3, 8, LADDER + 3))


class BatchOneBranch(gn.WeightNetConv):
    """WeightNet's public forward has a batch-1 branch: a plain convolution with the generated kernel."""

    def forward(self, x, x_gap):
        if x.shape[0] == 1:
            w = self.wn_fc2(torch.sigmoid(self.wn_fc1(x_gap))).reshape(self.oup, self.inp, self.ksize, self.ksize)
            return F.conv2d(x, w, stride=self.stride, padding=self.pad)
        return super().forward(x, x_gap)


class BatchOneNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.reduce = nn.Conv2d(8, 16, 1)
        self.dyn = BatchOneBranch(8, 8, 3, 1, 16)

    def forward(self, x):
        x = self.stem(x)
        return self.dyn(x, self.reduce(x.mean((2, 3), keepdim=True))).mean((2, 3))


def test_a_batch_one_branch_in_the_users_code_is_not_frozen_into_the_graph(tmp_path):
    torch.manual_seed(0)
    model = BatchOneNet().eval()
    path = tmp_path / "b1.onnx"
    assert export(model, path, input_size=SIZE)
    assert_onnx_exact(path, model, batches=(1, 3, 8, LADDER + 1))


@pytest.mark.parametrize("form", ["auto", "unfold", "loop"])
@pytest.mark.parametrize("name", ["kernelwarehouse", "weightnet", "variant"])
def test_papers_networks_export_exactly_on_onnx_runtime_and_openvino(name, form, tmp_path):
    model = small(name)
    path = tmp_path / f"{name}.onnx"
    result = export(model, path, input_size=SIZE, form=form)
    assert result and result.metadata["dcd_deploy.dynamic_batch"] == "true"
    assert all(layer.family == "generic" for layer in result.report.layers)
    forms = {layer.form for layer in result.report.lowered}
    # the portable graph: the cost model never picks the batch-specific folded form on a dynamic batch
    assert forms <= {"unfold", "loop"} if form == "auto" else forms == {form}
    assert_onnx_exact(path, model, batches=(1, 3, 8, LADDER + 1))
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 3, 8, LADDER + 1):
        x = image(batch, seed=20 + batch)
        ref, tol = bound(model, x)
        got = torch.from_numpy(np.asarray(compiled(x.numpy())[compiled.output(0)]))
        assert relative_error(got, ref) <= tol


def test_the_shared_warehouse_stays_a_parameter_of_the_lowered_network():
    """A leaf reads the stage's warehouse through a list; fx must not drop it from the lowered network."""
    model = small("kernelwarehouse")
    lowered, report = lower_model(model, image(1))
    params = {id(p) for p in lowered.parameters()}
    layers = [m.module for m in lowered.modules() if isinstance(m, LoweredFoldedConv)]
    assert report and len(layers) == 8
    assert all(id(layer.store[0].cells) in params for layer in layers)
    assert len({id(layer.store[0]) for layer in layers}) == 4  # one warehouse per stage, shared by its layers


# ------------------------------------------------------------------------------------------ static twin


def test_static_twin_is_one_convolution_of_the_calls_shape():
    model = small("variant")
    twin = static_twin(model, example=image(1))
    convs = {name: m.conv for name, m in twin.named_modules() if name in ("dyn1", "dyn2", "dyn3")}
    assert isinstance(convs["dyn1"], nn.Conv2d) and convs["dyn1"].groups == 2 and convs["dyn1"].stride == (2, 2)
    assert convs["dyn2"].dilation == (2, 2) and convs["dyn2"].padding == (2, 2)
    assert isinstance(convs["dyn3"], nn.Conv1d)
    with torch.no_grad():
        assert twin(image(2)).shape == model(image(2)).shape


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.gen = nn.Linear(4, 4 * 4 * 9)

    def forward(self, x):
        n = x.shape[0]
        w = self.gen(x.mean((2, 3))).reshape(n * 4, 4, 3, 3)
        for _ in range(2):
            x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w, None, 1, 1, 1, n).view(n, 4, *x.shape[2:])
        return x


def test_a_layer_without_a_static_twin_says_why():
    model = with_stem(TwoConvs())
    infos, _ = generic_layers(model)
    assert len(infos["1"].calls) == 2
    with pytest.raises(LoweringError, match="runs 2 batch-folded convolutions"):
        static_twin(model, example=image(1))
    lowered, report = lower_model(model, image(1))
    assert report
    x = image(3, seed=3)
    with torch.no_grad():
        assert relative_error(lowered(x), model(x)) < 1e-5


def test_the_generic_info_describes_itself():
    infos, _ = generic_layers(small("variant"))
    assert isinstance(infos["dyn3"], GenericLayerInfo)
    assert infos["dyn3"].summary() == "VariantConv conv1d 32→32 3/2 g2"
    assert infos["dyn2"].geometry() == "3×3/1 d2"


# ------------------------------------------------------------------------------------------ export paths


def test_tune_times_both_forms_of_layers_with_extra_arguments_and_1d_maps():
    from dcd_deploy.exporting.tuning import TunedFormChooser

    chooser = TunedFormChooser(threads=1, runs=2)
    lowered, report = lower_model(small("variant"), image(1), chooser)
    assert report and len(chooser.cache) == 3
    assert {layer.form for layer in report.lowered} <= {"unfold", "loop", "folded"}


class FrozenBatch(nn.Module):
    """The batch turned into a Python number: the trace keeps the example's batch."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.gen = nn.Linear(c, c * c * 9)
        self.c = c

    def forward(self, x):
        n = int(x.shape[0])
        w = self.gen(x.mean((2, 3))).reshape(n * self.c, self.c, 3, 3)
        y = F.conv2d(x.reshape(1, n * self.c, *x.shape[2:]), w, None, 1, 1, 1, n)
        return y.view(n, self.c, *y.shape[2:])


def test_a_batch_frozen_by_the_users_code_is_named_as_such(tmp_path):
    model = with_stem(FrozenBatch())
    with pytest.raises(LoweringError) as info:
        export(model, tmp_path / "frozen.onnx", input_size=16)
    text = " ".join(info.value.message.split())
    assert "The forward() of 1 (FrozenBatch) turns the batch size into a Python number" in text
    assert "froze batch 2 into the graph" in text and "dcd-deploy bug" not in text
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", [dict(fp16=True), dict(dynamic_size=True)])
def test_fp16_and_dynamic_size_exports_pass(option, tmp_path):
    model = small("variant")
    path = tmp_path / "v.onnx"
    assert export(model, path, input_size=SIZE, **option)
    if "dynamic_size" in option:
        assert_onnx_exact(path, model, batches=(1, 3), size=40)


def test_int8_export_of_a_generic_network_passes_its_check(tmp_path):
    model = small("kernelwarehouse")
    calibration = image(16, seed=42).numpy()
    result = export(model, tmp_path / "kw_int8.onnx", input_size=SIZE, int8=True, calibration=calibration)
    assert result and result.metadata["dcd_deploy.precision"] == "int8"
    assert all(layer.family == "generic" for layer in result.report.lowered)


def test_the_folded_form_is_taken_only_by_name_on_a_dynamic_batch(tmp_path):
    """The folded form's If ladder branches on the batch: the cost model never picks it (the portable
    graph), a fixed --batch export never holds it, and --form folded on a dynamic batch does."""
    model = small("weightnet")
    fixed = export(model, tmp_path / "b2.onnx", input_size=SIZE, batch=2)
    assert fixed and "folded" not in {layer.form for layer in fixed.report.lowered}
    assert_onnx_exact(tmp_path / "b2.onnx", model, batches=(2,))
    named = export(model, tmp_path / "named.onnx", input_size=SIZE, form="folded")
    assert named and {layer.form for layer in named.report.lowered} == {"folded"}
    dynamic = export(model, tmp_path / "auto.onnx", input_size=SIZE)
    assert dynamic and "folded" not in {layer.form for layer in dynamic.report.lowered}
