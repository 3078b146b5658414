"""``dcd-deploy bench``: time every deployment option side by side, interleaved, on this machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dcd_deploy.bench.settings import DEFAULT_NAIVE_EXPORTER, DEFAULT_RUNS, DEFAULT_WARMUP, NAIVE_EXPORTERS

from ..options import (
    LOADING_KEYS,
    apply_options,
    load_from_options,
    loading_options,
    normalisation_options,
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


def _measure_options(f: Callable) -> Callable:
    """What is measured and how: providers, batch sizes, input size, threads, rounds, rows' options."""
    options = [
        providers_option(),
        click.option("--batch", "batches", default="1", show_default=True, metavar="LIST", callback=_batches,
                     help="Comma-separated batch sizes, e.g. 1,8."),
        click.option("--input-size", callback=_input_size, metavar="N|HxW",
                     help="Input height and width. Default: what the ONNX file was exported for (metadata "
                          "dcd_deploy.input_size), else 224."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Threads for PyTorch and for ONNX Runtime's intra-op pool. Default: PyTorch's default."),
        click.option("--warmup", type=click.IntRange(min=0), default=DEFAULT_WARMUP, show_default=True,
                     help="Untimed warm-up rounds."),
        click.option("--runs", type=click.IntRange(min=1),
                     help=f"Timed rounds (every row runs once per round). Default: {DEFAULT_RUNS}."),
        click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                     help="Measure for this many seconds instead of a number of rounds."),
        click.option("--cuda-graph", is_flag=True, help="Capture CUDA graphs for the ONNX Runtime GPU rows (static shapes)."),
        click.option("--target", metavar="TARGET", default=None,
                     help="Cost model the dcd-deploy row is exported with, as `export --target`. Default: cuda when "
                          "--providers has a GPU provider, else cpu."),
        click.option("--naive-exporter", type=click.Choice(list(NAIVE_EXPORTERS)), default=DEFAULT_NAIVE_EXPORTER,
                     show_default=True, help="Exporter of the naive row: auto tries dynamo=True, then dynamo=False."),
        click.option("--calibration", type=click.Path(exists=True), metavar="FILE|DIR",
                     help="Add the int8 rows (int8 export and int8 static twin), calibrated on these samples as "
                          "`export --calibration` reads them; their error column is top-1 agreement and logit cosine."),
        click.option("--int8", is_flag=True, help="Ask for the int8 rows explicitly (needs --calibration)."),
        normalisation_options,
    ]
    return apply_options(f, options)


def _report_options(f: Callable) -> Callable:
    """Report files and progress display."""
    options = [
        click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE", help="Write the report as JSON."),
        click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Write it as Markdown."),
        click.option("--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Write it as one self-contained HTML page with latency-distribution plots."),
        click.option("--no-progress", is_flag=True,
                     help="No progress (a bar on a terminal, else one line per stage and row on stderr)."),
    ]
    return apply_options(f, options)


def _subject(source: str, loading: dict[str, Any]) -> Any:
    """An ONNX file's path as it is, a checkpoint loaded with the loading options (which apply to checkpoints only)."""
    if not source.lower().endswith(".onnx"):
        return load_from_options(source, **loading)
    given = [k for k in LOADING_KEYS if loading[k] not in (None, False, ())]
    if given:
        raise click.UsageError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to checkpoints; "
                               "an ONNX file already is the network.")
    return source


@click.command("bench")
@click.argument("source", metavar="CHECKPOINT|MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
@loading_options
@_measure_options
@_report_options
@reports_user_errors
def command(source: str, json_path: str | None, markdown_path: str | None, html_path: str | None, no_progress: bool,
            **options: Any) -> None:
    """Time the deployment options of a DCD model side by side, in one interleaved run.

    With a CHECKPOINT: PyTorch eager (original and lowered), a plain torch.onnx export ("naive"),
    the dcd-deploy export and the static twin (the floor), per provider and batch size; with
    --calibration also the int8 export and the int8 static twin. With an ONNX file: that file alone. Exit code 0 when at least one row was measured.
    """
    from dcd_deploy.bench.progress import progress_printer
    from dcd_deploy.bench.report import check_report_paths, render_table, write_reports
    from dcd_deploy.bench.run import bench, check_bench_inputs

    reports = {"json": json_path, "markdown": markdown_path, "html": html_path}
    check_report_paths(**reports)
    check_bench_inputs(options["batches"], options["input_size"])  # before the checkpoint is loaded
    subject = _subject(source, pop_loading(options))
    progress = progress_printer(enabled=not no_progress)
    try:
        result = bench(subject, progress=progress, **options)
    finally:
        progress.close()
    click.echo(render_table(result), nl=False)
    for path in write_reports(result, **reports):
        click.echo(f"wrote {path}")
    result.raise_if_nothing_measured()
