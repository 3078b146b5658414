"""``dcd-deploy evaluate``: top-1 / top-5 accuracy of an ONNX model on labelled data, beside its checkpoint."""

from __future__ import annotations

import functools

import click

from ..options import (
    load_from_options,
    loading_options,
    normalisation_options,
    optional_size_option,
    pop_loading,
    providers_option,
    reports_user_errors,
)


@click.command("evaluate")
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(), metavar="FILE|DIR",
              help="Labelled data: an .npz with 'input' (N×C×H×W) and 'labels', an .npz of raw 'images' with 'labels' "
                   "and a 'preprocess' recipe, or a folder with one subfolder of images per class.")
@providers_option()
@click.option("--batch", type=int, default=32, show_default=True, help="Samples per run (a fixed-batch model uses its own).")
@click.option("--samples", type=int, help="Evaluate only the first N samples.")
@optional_size_option("Image size for class folders when the model's is dynamic (default: the size recorded at export).")
@normalisation_options
@click.option("--max-drop", type=float, metavar="PTS",
              help="Exit 1 when the ONNX top-1 is more than PTS percentage points below the checkpoint's.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), metavar="OUT",
              help="Write the result as JSON ('-': stdout, the table then goes to stderr).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@loading_options
@reports_user_errors
def command(model: str, checkpoint: str | None, data: str, json_path: str | None, quiet: bool, **options) -> None:
    """Measure MODEL.onnx's accuracy on labelled data, and CHECKPOINT's original network's beside it.

    Prints top-1 / top-5 accuracy for each provider and, with a checkpoint, for the PyTorch
    original, their top-1 agreement and the classes whose predictions changed most.

    Exit status: 0 ok, 1 top-1 dropped more than --max-drop, 2 usage or input error, 3 provider
    unavailable, 130 Ctrl-C.
    """
    from dcd_deploy.compare.accuracy import evaluate
    from dcd_deploy.reporting import check_output_path

    loading = pop_loading(options)
    if json_path and json_path != "-":
        check_output_path(json_path, "--json report")
    reference = functools.partial(load_from_options, checkpoint, **loading) if checkpoint else None
    result = evaluate(model, data, reference, progress=not quiet, **options)
    click.echo(result.render(), err=json_path == "-")
    if json_path == "-":
        click.echo(result.to_json(), nl=False)
    elif json_path:
        click.echo(f"wrote {result.write_json(json_path)}")
    if failure := result.failure():
        raise failure
