"""``dcd-deploy inspect``: what a checkpoint holds and the network it needs."""

from __future__ import annotations

import json

import click

from ..options import input_size_option, load_from_options, loading_options, pop_loading, reports_user_errors


@click.command("inspect")
@click.argument("checkpoint")
@loading_options
@input_size_option(help="Input height and width at which multiply-accumulates are counted (N or HxW).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@reports_user_errors
def command(checkpoint: str, input_size: tuple[int, int], as_json: bool, **kwargs) -> None:
    """Show the architecture of CHECKPOINT (inferred or given), its size, cost and every DCD layer.

    Without --arch, the architecture and its options are inferred from the checkpoint's keys and
    shapes; with --arch, the options given are checked against the file.
    """
    from dcd_deploy.inspection import MAC_SAMPLES, inspect_model
    from dcd_deploy.runtime.inputs import check_input_memory

    check_input_memory(MAC_SAMPLES, 3, input_size, 4, "the inputs of the MAC count")  # before loading
    loaded = load_from_options(checkpoint, **pop_loading(kwargs))
    result = inspect_model(loaded, input_size=input_size)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())
