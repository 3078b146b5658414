"""``dcd-deploy repo``: a Triton Inference Server model repository for an exported ONNX file."""

from __future__ import annotations

import click

from ..options import reports_user_errors


@click.command("repo")
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--name", help="Model name in the repository. Default: the file's stem.")
@click.option("--max-batch", type=click.IntRange(min=1),
              help="max_batch_size for a file with a dynamic batch axis. Default: 16.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True, help="Instance kind.")
@reports_user_errors
def command(model: str, directory: str, name: str | None, max_batch: int | None, instances: int, device: str) -> None:
    """Write DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx for Triton's ONNX Runtime backend.

    Inputs, outputs, data types, dims and max_batch_size are read from the file; a dynamic batch axis
    gets Triton's dynamic batcher. Exit status: 0 written, 2 bad input or unwritable DIR (nothing written).
    """
    from dcd_deploy.serve.repository import write_repository

    target = write_repository(model, directory, name=name, max_batch=max_batch, instances=instances, device=device)
    click.echo(f"wrote {target / 'config.pbtxt'} and {target / '1' / 'model.onnx'}")
