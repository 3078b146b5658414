"""``dcd-deploy bench`` on CondConv / DyConv / ODConv networks.

Every row a checkpoint run has must come out for these families too: the dcd-deploy row within
1e-3 of the original network, the ``static`` row (the static twin: each dynamic layer replaced by
one convolution of one expert's shape) measured, and the ``naive`` row failing with torch.onnx's
own message (the one users search for) rather than an exception.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from family_nets import NETWORKS, REPO_ROOT, SIZE, build

from dcd_deploy.bench import bench
from dcd_deploy.lowering import find_dynamic_layers
from dcd_deploy.lowering.static_twin import static_twin

NAIVE_FAILURES = ("kernel of unknown shape", "SymbolicTensor")


@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_bench_has_a_static_row_and_an_exact_dcd_deploy_row(family):
    model = build(family)
    result = bench(model, batches=(1, 3), input_size=SIZE, threads=1, warmup=1, runs=3)
    rows = {(row.row, row.batch): row for row in result.rows}
    for batch in (1, 3):
        static, deployed, naive = rows["static", batch], rows["dcd-deploy", batch], rows["naive", batch]
        assert static.status == "measured" and static.stats is not None, static.reason
        assert deployed.status == "measured", deployed.reason
        assert deployed.max_rel_err is not None and deployed.max_rel_err <= 1e-3
        assert deployed.vs_static is not None and deployed.vs_static > 0
        assert naive.status == "failed" and any(text in naive.reason for text in NAIVE_FAILURES), naive.reason


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx's TorchScript exporter
@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_static_twin_keeps_one_expert_shape_per_dynamic_layer(family, tmp_path):
    """The static row's network: no dynamic layer left, each replaced by one convolution of an expert's shape."""
    model = build(family)
    layers = {f.path: f.match for f in find_dynamic_layers(model)}
    twin = static_twin(model)
    assert not find_dynamic_layers(twin)
    for path, info in layers.items():
        conv = next(m for m in twin.get_submodule(path).modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.shape == (info.c_out, info.c_in // info.groups, info.kernel, info.kernel)
        assert (conv.stride[0], conv.groups) == (info.stride, info.groups)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert twin(x).shape == model(x).shape
    path = tmp_path / "twin.onnx"
    torch.onnx.export(twin, (x,), path, dynamo=False, input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    assert "Loop" not in {node.op_type for node in onnx.load(path).graph.node}


def test_cli_bench_on_the_odconv_sample(run_cli, tmp_path):
    checkpoint = REPO_ROOT / "sample_models" / "od_resnet10_digits.pth"
    out = tmp_path / "bench.json"
    result = run_cli("bench", checkpoint, "--model", "sample_models.dynamic_nets:od_resnet", "--model-arg",
                     "layers=[1,1,1,1]", "--model-arg", "num_classes=10", "--model-arg", "width=8", "--input-size",
                     SIZE, "--batch", "1", "--threads", "1", "--warmup", "1", "--runs", "3", "--no-progress",
                     "--json", out)
    assert result.exit_code == 0, result.output
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["static"]["status"] == "measured"
    assert rows["dcd-deploy"]["status"] == "measured" and rows["dcd-deploy"]["max_rel_err"] <= 1e-3
    assert "static" in result.output and "dcd-deploy" in result.output
