"""``dcd-deploy serve``: answer the Open Inference Protocol v2 over HTTP with a dynamic batcher."""

from __future__ import annotations

from typing import Any

import click

from ..options import apply_options, reports_user_errors


def parse_preferred(_ctx: Any, _param: Any, value: str) -> str | tuple[int, ...]:
    """``auto`` or ``N[,M...]`` (the sizes are checked against --max-batch once the model is read)."""
    from dcd_deploy.serve.preferred import parse_spec

    try:
        return parse_spec(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}.") from None


def serving_options(f: Any) -> Any:
    options = [
        click.option("--name", help="Model name in the URL paths (/v2/models/NAME). Default: the file's stem."),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
        click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
                     help="Port to listen on (0: any free port)."),
        click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Most samples one model run takes; a request above it is refused (400)."),
        click.option("--preferred-batch", default="auto", show_default=True, callback=parse_preferred,
                     metavar="auto|N[,M...]",
                     help="Batch size(s) to form when more samples wait (each ≤ --max-batch). auto: the fastest "
                          "power of two, measured on the session at start-up (about 3 s, before the server reports ready)."),
        click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
                     help="How long a batch waits to fill while the model is idle."),
        click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Most requests waiting; one more is refused with 503."),
        click.option("--providers", default="cpu", show_default=True, metavar="cpu|cuda",
                     help="ONNX Runtime execution provider of the session (one; exit 3 when it is not available)."),
        click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads. Default: all cores."),
        click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Serve application (@serve.batch)."),
        click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --ray: replicas of the deployment."),
        click.option("--address", help="With --ray: an existing Ray cluster (e.g. auto or 10.0.0.1:6379). "
                                       "Default: start a local Ray instance and stop it on exit."),
    ]
    return apply_options(f, options)


@click.command("serve")
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@serving_options
@reports_user_errors
def command(model: str, use_ray: bool, replicas: int, address: str | None, **options: Any) -> None:
    """Serve MODEL.onnx over HTTP with the Open Inference Protocol v2 (KServe, Triton clients).

    By default one process: uvicorn with a batching queue in front of one ONNX Runtime session. With
    --ray the same endpoints run as a Ray Serve application. Ctrl-C exits 130, SIGTERM exits 0.
    Exit status: 0 stopped by SIGTERM, 2 bad model or taken port, 3 provider unavailable, 130 Ctrl-C.
    """
    if options["preferred_batch"] != "auto":  # early, before the model loads; the file's fixed batch is checked later
        from dcd_deploy.serve.preferred import check_sizes

        check_sizes(options["preferred_batch"], options["max_batch"])
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    if use_ray:
        from dcd_deploy.serve.ray_app import serve_ray

        serve_ray(model, replicas=replicas, address=address, say=say, **options)
        return
    if replicas != 1 or address:
        raise click.UsageError("--replicas and --address apply to --ray.")
    from dcd_deploy.serve.app import serve_forever

    serve_forever(model, say=say, **options)
