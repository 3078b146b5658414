"""``dcd-deploy parity``: does the ONNX file still compute what the trained model computes?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..options import load_from_options, loading_options, pop_loading, providers_option, reports_user_errors


def _floats(_ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers (e.g. 0.485,0.456,0.406).")
    return values


def _size(_ctx, _param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    from dcd_deploy.errors import InputError
    from dcd_deploy.compare.inputs import parse_size

    try:
        return parse_size(value)
    except InputError as exc:
        raise click.BadParameter(exc.message) from None


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
@click.option("--input-size", callback=_size, metavar="N|HxW",
              help="Input size for models with dynamic height and width (default: the size recorded at export).")
@click.option("--mean", callback=_floats, metavar="LIST", help="Per-channel mean for images [default: ImageNet's].")
@click.option("--std", callback=_floats, metavar="LIST", help="Per-channel std for images [default: ImageNet's].")
@click.option("--atol", type=float, help="Absolute tolerance (default: 1e-4·max|ref| float32, 2e-2·max|ref| float16/tf32).")
@click.option("--rtol", type=float, help="Relative tolerance (default: 1e-4 float32, 1e-2 float16/tf32).")
@click.option("--reference", "reference_dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Precision the original PyTorch model is evaluated in.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), metavar="OUT",
              help="Write the full result as JSON ('-': stdout, the table then goes to stderr).")
@click.option("--save-io", type=click.Path(file_okay=False), metavar="DIR",
              help="Save the inputs, reference outputs and each provider's outputs as .npy files.")
@click.option("--localize", is_flag=True, help="On failure, find the first DCD layer whose output diverges.")
@click.option("--warn-only", is_flag=True, help="Report a parity failure but exit 0.")
@loading_options
@reports_user_errors
def command(model: str, checkpoint: str, providers: str, provider_option: tuple[str, ...], inputs: str | None,
            samples: int | None, batch: int | None, seed: int, input_size: tuple[int, int] | None,
            mean: tuple[float, ...] | None, std: tuple[float, ...] | None, atol: float | None, rtol: float | None,
            reference_dtype: str, json_path: str | None, save_io: str | None, localize: bool, warn_only: bool,
            **loading) -> None:
    """Check that MODEL.onnx computes what the original PyTorch model of CHECKPOINT computes.

    Runs the same samples through the checkpoint's network (the original, not the lowered one)
    and through ONNX Runtime on each provider, and compares every output. Passes when all values
    are finite and |onnx - ref| <= atol + rtol·|ref| everywhere.

    Exit status: 0 pass, 1 parity failure, 2 usage or input error, 3 provider unavailable.
    """
    from dcd_deploy.errors import InputError, ParityFailure
    from dcd_deploy.compare.inputs import IMAGENET_MEAN, IMAGENET_STD, load_inputs
    from dcd_deploy.compare.parity import check_parity, parse_provider_options, read_onnx, resolve_providers

    to_stdout = json_path == "-"
    echo = (lambda msg="": click.echo(msg, err=True)) if to_stdout else click.echo
    # cheapest checks first: providers (exit 3), the ONNX file and the inputs, then the checkpoint
    if json_path and not to_stdout and not Path(json_path).resolve().parent.is_dir():
        raise InputError(f"The folder of --json {json_path} does not exist.",
                         "Create it first or choose another path.")
    names = resolve_providers(providers)
    options = parse_provider_options(provider_option)
    onnx_file = read_onnx(model)
    samples_in = load_inputs(inputs, onnx_file.spec, samples=samples, seed=seed, mean=mean or IMAGENET_MEAN,
                             std=std or IMAGENET_STD, input_size=input_size)
    loaded = load_from_options(checkpoint, **pop_loading(loading))
    result = check_parity(onnx_file, loaded, providers=names, inputs=samples_in, batch=batch, atol=atol, rtol=rtol,
                          reference_dtype=reference_dtype, provider_options=options, save_io_dir=save_io,
                          localize=localize)
    echo(result.render())
    if json_path:
        if to_stdout:
            json.dump(result.to_dict(), sys.stdout, indent=2, allow_nan=False)
            sys.stdout.write("\n")
        else:
            result.write_json(json_path)
            echo(f"wrote {json_path}")
    if result.saved_io:
        echo(f"saved inputs and outputs to {save_io}")
    if not result:
        if warn_only:
            click.echo("warning: parity failed; exiting 0 because of --warn-only", err=True)
            return
        hint = ("Re-export the model from this checkpoint with `dcd-deploy export`"
                + ("" if localize else ", or run again with --localize to find the first diverging DCD layer")
                + "; if the difference is expected (e.g. a float16 model), set --atol/--rtol.")
        tf32 = sorted({p.short for p, _ in result.failures if p.precision == "tf32"})
        if tf32:  # TF32 rounding in deep networks can exceed the tf32 default: say how to tell it from a bug
            hint = (f"{', '.join(tf32)} computed float32 convolutions in TF32 (10 mantissa bits). Run again with "
                    + " ".join(f"--provider-option {p}:use_tf32=0" for p in tf32)
                    + ": if that passes, the export is right and the difference is TF32 rounding (deploy with "
                    "use_tf32=0 or accept it with --atol/--rtol); if it fails too, " + hint[0].lower() + hint[1:])
        raise ParityFailure("Parity failed: the ONNX model does not compute what the trained model computes "
                            f"({', '.join(f'{p.short}/{o.name}' for p, o in result.failures)}).", hint)
