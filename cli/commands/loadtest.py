"""``dcd-deploy loadtest``: throughput and latency percentiles of an OIP v2 server per concurrency level."""

from __future__ import annotations

import click

from ..options import reports_user_errors


def _levels(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of positive integers (example: 1,8,32).")
    return levels


@click.command("loadtest")
@click.argument("url")
@click.option("--model", required=True, help="Model name on the server (/v2/models/NAME).")
@click.option("--concurrency", default="1,8,32", show_default=True, callback=_levels, metavar="LIST",
              help="Concurrent clients per level, comma-separated.")
@click.option("--requests", type=click.IntRange(min=1), help="Requests per level.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Seconds per level.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds one request may take before it counts as an error.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE", help="Write the result as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write one HTML page with the latency/throughput plot.")
@reports_user_errors
def command(url: str, model: str, concurrency: list[int], requests: int | None, duration: float | None,
            timeout_s: float, json_path: str | None, html_path: str | None) -> None:
    """Load the OIP v2 server at URL (e.g. 127.0.0.1:8000) with single-sample requests, as perf_analyzer does.

    Per concurrency level: throughput (inferences/s), p50/p90/p99 latency (ms) and errors. Give
    --requests N or --duration S. Exit status: 0 measured, 1 no request answered, 2 usage error.
    """
    from dcd_deploy.serve.loadreport import check_paths, write_reports
    from dcd_deploy.serve.loadtest import loadtest

    if (requests is None) == (duration is None):
        raise click.UsageError("Give one of --requests N and --duration SECONDS.")
    check_paths(json=json_path, html=html_path)
    say = lambda lv: click.echo(f"concurrency {lv.concurrency}: {lv.throughput:.1f} infer/s, {lv.errors} errors", err=True)  # noqa: E731
    result = loadtest(url, model, concurrency, requests=requests, duration=duration, timeout_s=timeout_s, on_level=say)
    click.echo(result.render(), nl=False)
    for path in write_reports(result, json=json_path, html=html_path):
        click.echo(f"wrote {path}")
    result.raise_if_nothing_answered()
