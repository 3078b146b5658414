"""``dcd-deploy bench``: every row and every file from a short run, ONNX-only mode, unavailable providers."""

from __future__ import annotations

import html.parser
import json
import math
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from dcd_deploy.bench.naive import naive_export
from dcd_deploy.bench.report import render_table, to_html, to_json, to_markdown
from dcd_deploy.bench.results import ROWS, BenchResult, BenchRow, Prepared
from dcd_deploy.bench.run import findings
from dcd_deploy.exporting.pipeline import export
from dcd_deploy.load.model import load_model
from dcd_deploy.runtime.timing import LatencyStats

SIZE = 48  # conftest's small_checkpoint: the sample models' mobilenetv2_dcd w0.35 at 48×48
CUDA_HERE = "CUDAExecutionProvider" in ort.get_available_providers()
# Short runs: few rounds, one thread (the test machine's cores are shared), and the TorchScript
# exporter for the naive row (torch.export of a full network takes about a minute; the default
# dynamo path is covered by test_bench_e2e.py).
SHORT = ["--runs", "3", "--warmup", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def onnx_file(small_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "small_dcd.onnx"
    export(load_model(small_checkpoint), path, input_size=SIZE)
    return path


@pytest.fixture
def bench_cli(run_cli):
    def invoke(*args):
        result = run_cli("bench", *args)
        assert "Traceback" not in result.output, result.output
        return result

    return invoke


def _flat(text: str) -> str:
    """Lines joined: messages are wrapped at a width, and paths vary in length."""
    return " ".join(text.split())


class _HtmlChecker(html.parser.HTMLParser):
    """Counts tags and checks that every non-void tag is closed in order."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "path", "use", "rect", "line", "circle", "stop"})

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def _facts_present(text: str, data: dict) -> None:
    """Versions, CPU model, thread count and date appear in every report."""
    assert data["versions"]["onnxruntime"] in text and data["versions"]["torch"] in text
    assert data["machine"]["cpu"] in text
    assert data["machine"]["date"] in text
    assert "threads: 1" in text or "threads</td><td>1 " in text


def test_checkpoint_run_gives_every_row_and_every_file(small_checkpoint, bench_cli, tmp_path):
    paths = {k: tmp_path / f"report.{k}" for k in ("json", "md", "html")}
    result = bench_cli(small_checkpoint, "--input-size", SIZE, "--batch", "1,2", "--providers", "cpu,cuda",
                    "--naive-exporter", "torchscript", *SHORT,
                    "--json", paths["json"], "--markdown", paths["md"], "--html", paths["html"])
    assert result.exit_code == 0, result.output

    data = json.loads(paths["json"].read_text())
    assert data["mode"] == "checkpoint" and data["input_size"] == [SIZE, SIZE]
    assert data["settings"]["threads"] == 1 and data["settings"]["ort_spinning"] is False
    rows = {(r["provider"], r["batch"], r["row"]): r for r in data["rows"]}
    assert set(rows) == {(p, b, row) for p in ("cpu", "cuda") for b in (1, 2) for row in ROWS}

    for b in (1, 2):
        static = rows["cpu", b, "static"]
        eager = rows["cpu", b, "eager"]
        for name in ("eager", "eager-lowered", "dcd-deploy", "static"):
            row = rows["cpu", b, name]
            assert row["status"] == "measured", row
            stats = row["stats"]
            assert stats["count"] == 3 and len(stats["times_ms"]) == 3
            assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
            assert stats["throughput_ips"] == pytest.approx(b * 1e3 / stats["mean_ms"])
            assert row["session_ms"] is not None and row["cold_ms"] > 0
            assert row["vs_static"] == pytest.approx(stats["p50_ms"] / static["stats"]["p50_ms"])
            assert row["vs_eager"] == pytest.approx(stats["p50_ms"] / eager["stats"]["p50_ms"])
        # what is timed computes what the trained network computes (the static twin does not)
        for name in ("eager-lowered", "dcd-deploy"):
            assert rows["cpu", b, name]["max_rel_err"] < 1e-4
        assert rows["cpu", b, "static"]["max_rel_err"] is None
        naive = rows["cpu", b, "naive"]
        assert naive["status"] == "measured" or "torch.onnx.export(dynamo=False) failed" in naive["reason"]

    for key, row in rows.items():
        if key[0] == "cuda" and not CUDA_HERE:
            assert row["status"] == "skipped" and "cuda" in row["reason"].lower() and row["stats"] is None

    markdown = paths["md"].read_text()
    page = paths["html"].read_text()
    for text in (result.output, markdown, page):
        _facts_present(text, data)
        for name in ROWS:
            assert name in text
        assert "cpu · batch 2" in text
    assert "| dcd-deploy |" in markdown

    checker = _HtmlChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert checker.counts.get("svg") == 2  # one latency plot per measured (provider, batch)
    assert "<script" not in page and "http://" not in page.split("<svg", 1)[0]  # self-contained


def test_onnx_file_alone_gives_only_the_rows_without_checkpoint(onnx_file, bench_cli, tmp_path):
    out = tmp_path / "r.json"
    result = bench_cli(onnx_file, "--batch", "1,2", *SHORT, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["mode"] == "onnx"
    assert data["input_size"] == [SIZE, SIZE]  # from the file's dcd_deploy.input_size metadata
    assert {r["row"] for r in data["rows"]} == {"dcd-deploy"}
    assert [(r["batch"], r["status"]) for r in data["rows"]] == [(1, "measured"), (2, "measured")]
    assert all(r["vs_static"] is None and r["vs_eager"] is None for r in data["rows"])


def test_loading_options_do_not_apply_to_an_onnx_file(onnx_file, bench_cli, expect_user_error):
    expect_user_error(bench_cli(onnx_file, "--arch", "mobilenetv2_dcd", *SHORT), "--arch apply to checkpoints")


@pytest.mark.skipif(CUDA_HERE, reason="CUDA is available here")
def test_unavailable_provider_with_a_checkpoint_makes_nothing_and_says_so(small_checkpoint, bench_cli):
    result = bench_cli(small_checkpoint, "--input-size", SIZE, "--providers", "cuda", *SHORT)
    assert result.exit_code == 3
    out = _flat(result.output)
    assert out.count("skipped [") == len(ROWS) + 1  # every row (and the single batch's batch-specific row), each with its reason
    assert "PyTorch" in out and "CUDAExecutionProvider" in out
    assert "not made" in out  # no export was spent on rows that cannot run
    assert "error: Nothing could be measured" in out


@pytest.mark.skipif(CUDA_HERE, reason="CUDA is available here")
def test_unavailable_provider_is_reported_not_crashed_on(onnx_file, bench_cli):
    both = bench_cli(onnx_file, "--providers", "cpu,cuda", *SHORT)
    assert both.exit_code == 0, both.output
    assert "skipped [1]" in both.output and "CUDAExecutionProvider" in _flat(both.output)

    only = bench_cli(onnx_file, "--providers", "cuda", *SHORT)
    assert only.exit_code == 3
    assert "error: Nothing could be measured" in _flat(only.output) and "--providers cpu" in _flat(only.output)


def test_rows_that_cannot_run_say_why(onnx_file, bench_cli):
    # the file was exported for 48×48; 40×40 does not fit its static spatial size
    result = bench_cli(onnx_file, "--input-size", "40", *SHORT)
    assert result.exit_code == 2
    out = _flat(result.output)
    assert "failed [1]" in out and "does not fit" in out
    assert "error: Nothing could be measured: every row failed" in out


def test_runs_and_duration_are_exclusive(onnx_file, bench_cli, expect_user_error):
    expect_user_error(bench_cli(onnx_file, "--runs", "3", "--duration", "1"), "mutually exclusive")


def test_bad_batch_list_is_a_usage_error(onnx_file, bench_cli, expect_user_error):
    expect_user_error(bench_cli(onnx_file, "--batch", "1,x"), "comma-separated list")


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: torch.export refuses it, the TorchScript tracer does not
            return y.mean((2, 3))
        return -y.mean((2, 3))


def test_naive_export_falls_back_and_says_why():
    data, note, failure = naive_export(_DataDependent(), (8, 8))
    assert data and failure is None
    assert note.startswith("torch.onnx.export(dynamo=False) after torch.onnx.export(dynamo=True) failed: ")
    assert "data-dependent" in note  # the root cause, not torch's wrapper text


def test_naive_export_failure_is_a_reason_not_an_exception():
    class Unexportable(nn.Module):
        def forward(self, x):
            if torch.jit.is_tracing():
                raise RuntimeError("this layer cannot be traced\nsecond line")
            return x

    data, note, failure = naive_export(Unexportable(), (4, 4), ("torchscript",))
    assert data is None and note is None
    assert failure == "torch.onnx.export(dynamo=False) failed: RuntimeError: this layer cannot be traced"


def _synthetic_result() -> BenchResult:
    def row(name, p50_ms, **kw):
        return BenchRow(name, "cpu", 1, setup_s=0.01, cold_s=0.02, stats=LatencyStats((p50_ms / 1e3,) * 3), **kw)

    rows = [row("eager", 10.0, vs_eager=1.0, vs_static=5.0), row("dcd-deploy", 4.0, vs_eager=0.4, vs_static=2.0,
            max_rel_err=float("inf")), row("static", 2.0, vs_eager=0.2, vs_static=1.0),
            BenchRow("naive", "cpu", 1, status="failed", reason="torch.onnx.export(dynamo=False) failed: X")]
    return BenchResult(
        source="m.pth", mode="checkpoint", model="toy", input_size=(32, 32), providers=["cpu"], batches=[1], threads=3,
        warmup=1, runs=3, duration=None, cuda_graph=False, rows=rows, prepared=[Prepared("naive", failure="X")],
        devices={"cpu": "Toy CPU"}, versions={"torch": "9.9", "onnxruntime": "8.8"},
        machine={"cpu": "Toy CPU", "cores": 3, "platform": "toy", "date": "2030-01-02T03:04:05+00:00"}, notes=["a note"],
    )


def test_reports_render_the_same_facts():
    result = _synthetic_result()
    table = render_table(result)
    assert "dcd-deploy" in table and "2.00×" in table and "0.400×" not in table and "0.40×" in table
    assert "failed [1]" in table and "[1] torch.onnx.export(dynamo=False) failed: X" in table
    assert "threads: 3" in table and "2030-01-02T03:04:05+00:00" in table and "Toy CPU" in table
    data = json.loads(to_json(result))  # strict JSON: the infinite error became null
    assert next(r for r in data["rows"] if r["row"] == "dcd-deploy")["max_rel_err"] is None
    assert data["rows"][0]["stats"]["p50_ms"] == pytest.approx(10.0)
    markdown = to_markdown(result)
    assert "| static | 10.0 | 20.0 | 2.00 |" in markdown and "1. torch.onnx.export(dynamo=False) failed: X" in markdown
    page = to_html(result)
    assert page.count("<svg") == 1 and "a note" in page and "threads" in page
    assert math.isfinite(data["rows"][2]["vs_static"])


def test_unwritable_report_fails_before_measuring(onnx_file, bench_cli, expect_user_error, tmp_path):
    result = bench_cli(onnx_file, *SHORT, "--html", tmp_path / "missing" / "r.html")
    expect_user_error(result, "--html", "does not exist")
    assert "img/s" not in result.output  # nothing was measured first


def test_without_a_terminal_each_stage_and_row_is_one_line_on_stderr(onnx_file, bench_cli):
    result = bench_cli(onnx_file, "--batch", "1,2", "--runs", "3", "--warmup", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert all(line.startswith("[") and "s] " in line for line in lines), lines
    text = "\n".join(lines)
    assert "setting up 0/2: cpu b1 dcd-deploy" in text and "setting up 1/2: cpu b2 dcd-deploy" in text
    for stage in ("setting up", "warming up", "measuring"):
        assert f"{stage} done in" in text
    assert "img/s" not in result.stderr and "img/s" in result.stdout  # the table stays on stdout


def _unstable_result() -> BenchResult:
    result = _synthetic_result()
    times = [1.0] * 100
    times[10] = times[60] = 9.0  # two interrupted runs
    spiky = BenchRow("dcd-deploy", "cpu", 1, setup_s=0.01, cold_s=0.02, stats=LatencyStats(tuple(t / 1e3 for t in times)))
    result.rows = [r for r in result.rows if r.row != "dcd-deploy"] + [spiky]
    result.notes = findings(result.rows)
    return result


def test_unstable_timings_are_a_note_with_their_likely_cause():
    result = _unstable_result()
    steady = [r for r in result.rows if r.measured and r.row != "dcd-deploy"]
    assert steady and all(r.unstable is None for r in steady)
    (note,) = result.notes
    assert note.startswith("cpu batch 1 dcd-deploy: timings unstable: p99 ")
    assert "another process" in note
    assert "another process" in _flat(render_table(result))
    assert "timings unstable" in to_markdown(result) and "timings unstable" in to_html(result)
    data = json.loads(to_json(result))
    assert data["notes"] == [note]
    rows = {r["row"]: r for r in data["rows"]}
    assert "another process" in rows["dcd-deploy"]["unstable"] and rows["static"]["unstable"] is None


def test_reports_are_written_whole_with_the_umask_mode(tmp_path):
    import os

    from dcd_deploy.bench.report import write_reports

    result = _synthetic_result()
    old = os.umask(0o022)
    try:
        (path,) = write_reports(result, json=tmp_path / "r.json")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert json.loads(path.read_text())["model"] == "toy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left behind


CALIBRATION = Path(__file__).resolve().parents[2] / "sample_models" / "digits_calibration.npz"


def test_calibration_adds_the_int8_rows_with_their_check(small_checkpoint, bench_cli, tmp_path):
    from dcd_deploy.bench.results import INT8_ROWS
    from dcd_deploy.exporting.quantize import INT8_TOLERANCE

    out = tmp_path / "bench.json"
    result = bench_cli(small_checkpoint, "--input-size", SIZE, "--batch", "1,2", "--naive-exporter", "torchscript",
                       "--calibration", CALIBRATION, "--int8", "--json", out, "--markdown", tmp_path / "b.md", *SHORT)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {(r["batch"], r["row"]): r for r in data["rows"]}
    assert {row for _, row in rows} == set(ROWS) | set(INT8_ROWS)
    for b in (1, 2):
        for name in INT8_ROWS:
            row = rows[b, name]
            assert row["status"] == "measured" and row["max_rel_err"] is None, row
            check = row["int8"]
            assert check["samples"] == 32 and check["tolerance"] == INT8_TOLERANCE
            assert 0 <= check["agreement"] <= 1 and -1 <= check["cosine_min"] <= check["cosine_mean"] <= 1 + 1e-9
            assert row["vs_static"] == pytest.approx(row["stats"]["p50_ms"] / rows[b, "static"]["stats"]["p50_ms"])
        assert rows[b, "dcd-deploy"]["int8"] is None and rows[b, "dcd-deploy"]["max_rel_err"] < 1e-4
    prepared = {p["row"]: p for p in data["preparation"]}
    assert prepared["int8"]["int8"] == rows[1, "int8"]["int8"]
    assert "int8" in data["row_descriptions"] and "int8-static" in data["row_descriptions"]
    agree = f"agree {rows[1, 'int8']['int8']['agreement']:.1%}"
    assert agree in _flat(result.output) and agree in (tmp_path / "b.md").read_text()


def test_int8_rows_need_calibration_and_a_checkpoint(small_checkpoint, onnx_file, bench_cli, expect_user_error):
    expect_user_error(bench_cli(small_checkpoint, "--input-size", SIZE, "--int8", *SHORT), "--int8 needs calibration data")
    expect_user_error(bench_cli(onnx_file, "--calibration", CALIBRATION, *SHORT), "--calibration applies to checkpoints")
    expect_user_error(bench_cli(small_checkpoint, "--input-size", 32, "--calibration", CALIBRATION, *SHORT),
                      "height 48 instead of 32")
