"""``dcd-deploy bench``: time every deployment option side by side, interleaved, on this machine."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..options import (
    LOADING_KEYS,
    load_from_options,
    loading_options,
    parse_input_size,
    pop_loading,
    providers_option,
    reports_user_errors,
)


def _batches(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        batches = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers (example: 1,8).") from None
    if not batches or any(b < 1 for b in batches):
        raise click.BadParameter(f"{value!r}: batch sizes must be positive integers (example: 1,8).")
    return batches


def _input_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    return None if value is None else parse_input_size(ctx, param, value)  # None: from the ONNX file, else 224


class TqdmProgress:
    """One progress bar per stage (preparing, setting up, warming up, measuring) on stderr, when it is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None
        self.last = 0.0
        self.detail = ""

    def __call__(self, stage: str, done: float, total: float, detail: str) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, leave=False, file=sys.stderr, dynamic_ncols=True, disable=None,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
        now = time.monotonic()
        if done < total and detail == self.detail and now - self.last < 0.2:
            return  # terminal writes between timed runs are kept rare
        self.last, self.detail = now, detail
        self.bar.n = done
        self.bar.set_postfix_str(detail, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command("bench")
@click.argument("source", metavar="CHECKPOINT|MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
@loading_options
@providers_option()
@click.option("--batch", "batches", default="1", show_default=True, metavar="LIST", callback=_batches,
              help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--input-size", callback=_input_size, metavar="N|HxW",
              help="Input height and width. Default: what the ONNX file was exported for (metadata "
                   "dcd_deploy.input_size), else 224.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads for PyTorch and for ONNX Runtime's intra-op pool. Default: PyTorch's default.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed warm-up rounds.")
@click.option("--runs", type=click.IntRange(min=1), help="Timed rounds (every row runs once per round). Default: 100.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Measure for this many seconds instead of a number of rounds.")
@click.option("--cuda-graph", is_flag=True, help="Capture CUDA graphs for the ONNX Runtime GPU rows (static shapes).")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Cost model the dcd-deploy row is exported with. Default: cuda when --providers has a GPU "
                   "provider, else cpu.")
@click.option("--naive-exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True,
              help="Exporter of the naive row: auto tries dynamo=True, then dynamo=False.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE", help="Write the report as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), metavar="FILE", help="Write it as Markdown.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write it as one self-contained HTML page with latency-distribution plots.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@reports_user_errors
def command(source: str, providers: str, batches: list[int], input_size: tuple[int, int] | None, threads: int | None,
            warmup: int, runs: int | None, duration: float | None, cuda_graph: bool, target: str | None, naive_exporter: str,
            json_path: str | None, markdown_path: str | None, html_path: str | None, no_progress: bool,
            **kwargs: Any) -> None:
    """Time the deployment options of a DCD model side by side, in one interleaved run.

    With a CHECKPOINT: PyTorch eager (original and lowered), a plain torch.onnx export ("naive"),
    the dcd-deploy export and the static twin (the floor), per provider and batch size. With an
    ONNX file: that file alone. Exit code 0 when at least one row was measured.
    """
    from dcd_deploy.bench.run import bench
    from dcd_deploy.bench.report import check_report_paths, render_table, write_reports

    if runs is not None and duration is not None:
        raise click.UsageError("--runs and --duration are mutually exclusive: give one.")
    reports = {"json": json_path, "markdown": markdown_path, "html": html_path}
    check_report_paths(**reports)
    loading = pop_loading(kwargs)
    onnx_file = source.lower().endswith(".onnx")
    if onnx_file:
        given = [k for k in LOADING_KEYS if loading[k] not in (None, False, ())]
        if given:
            raise click.UsageError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to checkpoints; "
                                   "an ONNX file already is the network.")
        subject: Any = source
    else:
        subject = load_from_options(source, **loading)
    progress = TqdmProgress(enabled=not no_progress)
    try:
        result = bench(subject, providers=providers, batches=batches, input_size=input_size, threads=threads,
                       warmup=warmup, runs=runs, duration=duration, cuda_graph=cuda_graph,
                       naive_exporter=naive_exporter, progress=progress, target=target)
    finally:
        progress.close()
    click.echo(render_table(result), nl=False)
    for path in write_reports(result, **reports):
        click.echo(f"wrote {path}")
    result.raise_if_nothing_measured()
