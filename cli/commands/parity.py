"""``dcd-deploy parity``: does the ONNX file still compute what the trained model computes?"""

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


@click.command("parity")
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@providers_option()
@click.option("--provider-option", "provider_option", multiple=True, metavar="PROVIDER:KEY=VALUE",
              help="ONNX Runtime provider option, e.g. cuda:use_tf32=0 (repeatable).")
@click.option("--inputs", type=click.Path(), metavar="DIR|FILE",
              help="Samples: a .npy/.npz array (N×C×H×W, npz key 'input'), an image or a folder of images. "
                   "Default: seeded random.")
@click.option("--samples", type=int, help="Number of samples (random default 16; files: the first N).")
@click.option("--batch", type=int, help="Samples per run (default: all at once, or the model's fixed batch).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@optional_size_option("Input size for models with dynamic height and width (default: the size recorded at export).")
@normalisation_options
@click.option("--atol", type=float, help="Absolute tolerance (default: 1e-4·max|ref| float32, 2e-2·max|ref| float16/tf32, "
              "raised to 10× the original's own float32 error against float64).")
@click.option("--rtol", type=float, help="Relative tolerance (default: 1e-4 float32, 1e-2 float16/tf32, raised likewise).")
@click.option("--reference", "reference_dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Precision the original PyTorch model is compared in [default: float64, or float32 with a note "
                   "when the network cannot run in float64].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), metavar="OUT",
              help="Write the full result as JSON ('-': stdout, the table then goes to stderr).")
@click.option("--save-io", type=click.Path(file_okay=False), metavar="DIR",
              help="Save the inputs, reference outputs and each provider's outputs as .npy files.")
@click.option("--localize", is_flag=True, help="On failure, find the first DCD layer whose output diverges.")
@click.option("--warn-only", is_flag=True, help="Report a parity failure but exit 0.")
@loading_options
@reports_user_errors
def command(model: str, checkpoint: str, json_path: str | None, save_io: str | None, provider_option: tuple[str, ...],
            warn_only: bool, **options) -> None:
    """Check that MODEL.onnx computes what the original PyTorch model of CHECKPOINT computes.

    Runs the same samples through the checkpoint's network (the original, not the lowered one)
    and through ONNX Runtime on each provider, and compares every output. Passes when all values
    are finite and |onnx - ref| <= atol + rtol·|ref| everywhere; by default ref is the float64
    evaluation and the tolerance allows 10× the original's own float32 error against it.

    Exit status: 0 pass, 1 parity failure, 2 usage or input error, 3 provider unavailable, 130 Ctrl-C.
    """
    from dcd_deploy.compare.parity import check_parity

    to_stdout = json_path == "-"
    echo = functools.partial(click.echo, err=to_stdout)
    reference = functools.partial(load_from_options, checkpoint, **pop_loading(options))
    result = check_parity(model, reference, provider_options=provider_option, save_io_dir=save_io,
                          json_path=None if to_stdout else json_path, **options)
    echo(result.render())
    if to_stdout:
        click.echo(result.to_json(), nl=False)
    elif json_path:
        echo(f"wrote {json_path}")
    if result.saved_io:
        echo(f"saved inputs and outputs to {save_io}")
    failure = result.failure()
    if failure and warn_only:
        click.echo("warning: parity failed; exiting 0 because of --warn-only", err=True)
    elif failure:
        raise failure
