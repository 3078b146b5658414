"""``dcd-deploy export``: lower the dynamic layers of a checkpoint's network and write ONNX."""

from __future__ import annotations

import dataclasses

import click

from dcd_deploy.exporting.options import DEFAULT_OPSET

from ..options import (
    LibraryChoice,
    input_size_option,
    load_from_options,
    loading_options,
    normalisation_options,
    pop_loading,
    reports_user_errors,
    stage_printer,
)


@click.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@loading_options
@input_size_option(help="Input height and width the graph is exported (and self-checked) at.")
@click.option("--batch", type=int, default=None, help="Static batch size (default: dynamic batch axis).")
@click.option("--dynamic-size", is_flag=True, help="Make height and width dynamic too.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset (checked against what torch.onnx and ONNX Runtime support before any work).")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute (float32 inputs/outputs).")
@click.option("--int8", is_flag=True, help="Quantize the static convolutions to int8 (QDQ, per-channel weights); "
              "attention, latent products, depthwise convolutions and the classifier stay float32. Needs --calibration.")
@click.option("--calibration", type=click.Path(), metavar="FILE|DIR", help="int8 calibration samples: .npz with "
              "'input' (N×3×H×W, preprocessed as in training), .npy, or a folder of images (with --mean/--std).")
@click.option("--calibration-method", type=LibraryChoice("dcd_deploy.exporting.quantize", "METHODS"), default="minmax",
              show_default=True, help="How --int8 fits the activations' ranges.")
@normalisation_options
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--form", type=LibraryChoice("dcd_deploy.lowering", "FORM_CHOICES"), default="auto", show_default=True,
              help="Lowered form of the dynamic layers: auto picks per layer with the target's cost model; a name is "
              "used wherever the layer's family offers it (DCD: factored, merged; CondConv, DyConv, ODConv: kernel, "
              "experts, unfold, loop; loop writes an ONNX Loop and is refused with --target cuda).")
@click.option("--target", type=LibraryChoice("dcd_deploy.lowering.costmodel", "TARGETS"), default="cpu",
              show_default=True,
              help="Where the graph will run: picks the cost model of --form auto, and the provider --tune times on.")
@click.option("--tune", is_flag=True, help="Pick each layer's form by timing both on the target's ONNX Runtime provider "
              "(slower export; --target cuda needs onnxruntime-gpu and a GPU).")
@click.option("--keep-failed", is_flag=True, help="Keep the ONNX file when the self-check fails (for debugging).")
@click.option("--no-check", is_flag=True, help="Skip the self-check against the original model on ONNX Runtime.")
@click.option("--allow-unlowered", is_flag=True, help="Export layers that look dynamic but could not be lowered as they are.")
@click.option("--report", "report_path", type=click.Path(), help="Also write the result (rewrite, ops, timings, "
              "metadata, self-check) as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final summary.")
@reports_user_errors
def command(checkpoint: str, output: str, input_size: tuple[int, int], batch: int | None, dynamic_size: bool,
            opset: int, fp16: bool, no_simplify: bool, form: str, target: str, tune: bool, keep_failed: bool, no_check: bool,
            allow_unlowered: bool, report_path: str | None, quiet: bool, mean: tuple[float, ...] | None,
            std: tuple[float, ...] | None, **int8_and_loading) -> None:
    """Lower the DCD layers of CHECKPOINT's network and export ONNX, then self-check it.

    The graph takes `input` (N×3×H×W, float32) and returns `logits`. The self-check runs the file
    on ONNX Runtime CPU against the ORIGINAL PyTorch model; on failure no file is written and the
    exit status is 1. With --int8 the self-check is top-1 agreement and logit cosine against the
    original on shifted calibration samples (measure accuracy with `dcd-deploy evaluate`). Every
    option and the output path are checked before any work (exit 2);
    Ctrl-C exits 130 and leaves no file.
    """
    from dcd_deploy.exporting.options import ExportOptions, validate
    from dcd_deploy.exporting.pipeline import run_export
    from dcd_deploy.exporting.tuning import tuned_form_chooser

    say = stage_printer(quiet)
    options = validate(ExportOptions(
        output, input_size=input_size, batch=batch, dynamic_size=dynamic_size, opset=opset, fp16=fp16,
        simplify=not no_simplify, form=form, target=target, self_check=not no_check, keep_failed=keep_failed,
        allow_unlowered=allow_unlowered, report=report_path, on_stage=say, progress=not quiet,
        **{k: int8_and_loading.pop(k) for k in ("int8", "calibration", "calibration_method")},
        **{k: tuple(v) for k, v in (("mean", mean), ("std", std)) if v is not None}))
    if tune:  # fails fast when the target's provider is missing
        options = dataclasses.replace(options, form=tuned_form_chooser(target=target, on_progress=say))
    say(f"loading {checkpoint}")
    result = run_export(load_from_options(checkpoint, **pop_loading(int8_and_loading)), options)
    click.echo(result.render(layers=not quiet))
