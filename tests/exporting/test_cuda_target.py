"""``--target cuda`` writes no control flow, for every family, and the file stays exact.

CUDA graphs capture no control flow (ONNX Runtime refuses ``enable_cuda_graph`` on a graph with a
Loop, If or Scan) and tract runs no Loop, so every ``--target cuda`` file must be free of them, in
the main graph and in any subgraph: the expert families' per-sample convolutions take the
loop-free ``unfold`` form (or ``kernel`` / ``experts``), never ``loop``. Each file is then run at
batch 1, 3 and 8 (one dynamic-batch file) on ONNX Runtime, tract and OpenVINO against the float64
evaluation of the original network, bound max(1e-4, 10 × the network's own float32 noise). The
target only picks forms, so all of this runs on a CPU.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from family_nets import NETWORKS, SIZE, build
from test_families_export import float64_bound, run_onnx

from dcd_deploy.errors import InputError
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.lowering import relative_error
from dcd_deploy.runtime.onnxfile import control_flow_nodes

TRACT_LIMIT_S = 120
TRACT_RUN = textwrap.dedent('''
    import sys, numpy as np, tract
    model = tract.onnx().load(sys.argv[1]).into_model().into_runnable()
    for name in sys.argv[2:]:
        np.save(name + ".out.npy", model.run([np.load(name)])[0].to_numpy())
''')


def run_tract(path, inputs: list[np.ndarray], tmp_path) -> list[np.ndarray]:
    names = []
    for i, x in enumerate(inputs):
        names.append(str(tmp_path / f"x{i}.npy"))
        np.save(names[-1], x)
    try:
        done = subprocess.run([sys.executable, "-c", TRACT_RUN, str(path), *names], capture_output=True, text=True,
                              timeout=TRACT_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tract did not load and run {path.name} within {TRACT_LIMIT_S} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return [np.load(name + ".out.npy") for name in names]


def run_openvino(path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [np.asarray(compiled(x)[compiled.output(0)]) for x in inputs]


def check_file(path, model: torch.nn.Module, tmp_path, runtimes=("ort", "tract", "openvino")) -> None:
    """No control flow; a dynamic batch; exact at batch 1, 3 and 8 on each runtime installed."""
    graph = onnx.load(str(path)).graph
    assert control_flow_nodes(graph) == []
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is a symbol
    hw = [d.dim_value or SIZE for d in graph.input[0].type.tensor_type.shape.dim[2:]]
    xs = [torch.randn(b, 3, *hw, generator=torch.Generator().manual_seed(b)) for b in (1, 3, 8)]
    outs: dict[str, list[np.ndarray]] = {"ort": [run_onnx(path, x) for x in xs]}
    if "tract" in runtimes:
        try:
            import tract  # noqa: F401
            outs["tract"] = run_tract(path, [x.numpy() for x in xs], tmp_path)
        except ImportError:
            pass
    if "openvino" in runtimes:
        try:
            outs["openvino"] = run_openvino(path, [x.numpy() for x in xs])
        except ImportError:
            pass
    for x, *got in zip(xs, *outs.values()):
        out64, bound = float64_bound(model, x)
        for runtime, out in zip(outs, got):
            assert out.shape == out64.shape, runtime
            err = relative_error(torch.from_numpy(np.asarray(out)), torch.from_numpy(out64))
            assert err <= bound, f"{runtime}, batch {x.shape[0]}: relative error {err:.2e} > {bound:.2e}"


@pytest.mark.parametrize("form", ["auto", "unfold"])
@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_every_family_exports_for_cuda_without_control_flow(family, form, tmp_path):
    model = build(family)
    path = tmp_path / f"{family}_{form}.onnx"
    result = export(model, path, input_size=SIZE, target="cuda", form=form)
    assert result and result.metadata["dcd_deploy.target"] == "cuda"
    forms = {layer.form for layer in result.report.lowered}
    assert "loop" not in forms
    if form == "unfold":
        assert "unfold" in forms
    check_file(path, model, tmp_path)


def test_odconv_mobilenetv2_depthwise_spatial_attention_for_cuda(tmp_path):
    """ODConv's depthwise 3×3 layers (α_s over the taps, no filter attention) in the loop-free form."""
    from sample_models import dynamic_nets as dn

    torch.manual_seed(0)
    model = dn.od_mobilenetv2(num_classes=10, width_mult=0.25, last_channel=64).eval()
    path = tmp_path / "od_mnv2.onnx"
    result = export(model, path, input_size=32, target="cuda")
    assert result and "unfold" in {layer.form for layer in result.report.lowered}
    check_file(path, model, tmp_path)


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_cuda_target_with_a_fixed_batch_or_a_dynamic_size_writes_no_control_flow(family, tmp_path):
    model = build(family)
    fixed = tmp_path / "fixed.onnx"
    assert export(model, fixed, input_size=SIZE, target="cuda", batch=2, self_check=False)
    assert control_flow_nodes(onnx.load(str(fixed)).graph) == []
    dynamic = tmp_path / "dynsize.onnx"
    assert export(model, dynamic, input_size=SIZE, target="cuda", dynamic_size=True, form="unfold")
    assert control_flow_nodes(onnx.load(str(dynamic)).graph) == []
    x = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(7))
    out64, bound = float64_bound(model, x)
    err = relative_error(torch.from_numpy(run_onnx(dynamic, x)), torch.from_numpy(out64))
    assert err <= bound


@pytest.mark.parametrize("options", [{}, {"batch": 2}, {"dynamic_size": True}], ids=["dynamic", "batch2", "dynsize"])
def test_dcd_sample_for_cuda_writes_no_control_flow(options, tmp_path):
    from dcd_deploy import load_model
    from family_nets import REPO_ROOT

    loaded = load_model(REPO_ROOT / "sample_models" / "mobilenetv2_dcd_w025_digits.pth")
    path = tmp_path / "dcd.onnx"
    assert export(loaded, path, input_size=SIZE, target="cuda", **options)
    assert control_flow_nodes(onnx.load(str(path)).graph) == []


def test_the_loop_form_is_refused_for_cuda(tmp_path):
    with pytest.raises(InputError, match="control flow"):
        export(build("odconv"), tmp_path / "x.onnx", input_size=SIZE, target="cuda", form="loop")
    assert not (tmp_path / "x.onnx").exists()


def test_tune_times_every_expert_form_on_cpu_and_none_with_control_flow_for_cuda(tmp_path):
    """--tune on CPU times the loop form too (its Loop expanded as in the file); the forms a CUDA
    tuning would time are those of target_forms, which has no control-flow form."""
    from dcd_deploy.exporting.tuning import time_forms, tuned_form_chooser
    from dcd_deploy.lowering import FAMILIES
    from dcd_deploy.lowering.costmodel import target_forms
    from sample_models import dynamic_nets as dn

    layer = dn.Dynamic_conv2d(8, 8, 3, padding=1, K=4, bias=False).eval()
    family = FAMILIES["dyconv"]
    info = family.match(layer)
    shape = (2, 8, 10, 10)
    assert set(time_forms(layer, info, shape, family.forms(info, shape), 1, 2)) == {"experts", "unfold", "loop"}
    assert target_forms(family, info, shape, "cuda") == ["experts", "unfold"]
    lines: list[str] = []
    chooser = tuned_form_chooser(threads=1, runs=2, on_progress=lines.append)
    assert export(build("dyconv"), tmp_path / "tuned.onnx", input_size=SIZE, form=chooser)
    assert lines and all("loop" in line for line in lines if "3×3" in line)


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_inspect_names_the_form_export_picks_on_each_target(family, tmp_path):
    """inspect's form column is what export --form auto picks, per target; never loop on cuda."""
    from dynamic_fixtures import inspect_network

    model = build(family)
    layers = inspect_network(model, SIZE).dynamic
    assert layers and all(set(layer.forms) == {"cpu", "cuda"} for layer in layers)
    assert all(layer.forms["cuda"] != "loop" for layer in layers)
    result = export(model, tmp_path / "m.onnx", input_size=SIZE, target="cuda", self_check=False)
    assert {row.path: row.form for row in result.report.lowered} == {layer.path: layer.forms["cuda"] for layer in layers}
