"""``dcd-deploy export``: lower the DCD layers of a checkpoint's network and write ONNX."""

from __future__ import annotations

import json
import time

import click

from ..options import input_size_option, load_from_options, loading_options, pop_loading, reports_user_errors


@click.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@loading_options
@input_size_option(help="Input height and width the graph is exported (and self-checked) at.")
@click.option("--batch", type=int, default=None, help="Static batch size (default: dynamic batch axis).")
@click.option("--dynamic-size", is_flag=True, help="Make height and width dynamic too.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute (float32 inputs/outputs).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--form", type=click.Choice(["auto", "factored", "merged"]), default="auto", show_default=True,
              help="Lowered form of DCD convolutions: auto picks per layer with the cost model.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the graph will run: picks the cost model of --form auto, and the provider --tune times on.")
@click.option("--tune", is_flag=True, help="Pick each layer's form by timing both on the target's ONNX Runtime provider "
              "(slower export; --target cuda needs onnxruntime-gpu and a GPU).")
@click.option("--keep-failed", is_flag=True, help="Keep the ONNX file when the self-check fails (for debugging).")
@click.option("--no-check", is_flag=True, help="Skip the self-check against the original model on ONNX Runtime.")
@click.option("--allow-unlowered", is_flag=True, help="Export layers that look dynamic but could not be lowered as they are.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the rewrite report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final summary.")
@reports_user_errors
def command(checkpoint: str, output: str, input_size: tuple[int, int], batch: int | None, dynamic_size: bool,
            opset: int, fp16: bool, no_simplify: bool, form: str, target: str, tune: bool, keep_failed: bool, no_check: bool,
            allow_unlowered: bool, report_path: str | None, quiet: bool, **loading) -> None:
    """Lower the DCD layers of CHECKPOINT's network and export ONNX, then self-check it.

    The graph takes `input` (N×3×H×W, float32) and returns `logits`. The self-check runs the file
    on ONNX Runtime CPU against the ORIGINAL PyTorch model; on failure the file is removed and the
    exit status is 1.
    """
    from dcd_deploy.exporting.pipeline import export
    from dcd_deploy.exporting.tuning import tuned_form_chooser

    start = time.perf_counter()
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(f"[{time.perf_counter() - start:6.1f}s] {msg}", err=True))
    chooser = tuned_form_chooser(threads=None, target=target, on_progress=say) if tune else form  # fails fast
    say(f"loading {checkpoint}")
    loaded = load_from_options(checkpoint, **pop_loading(loading))
    say(f"network: {loaded.describe()}")
    for note in loaded.notes:
        say(f"  inferred {note}")
    result = export(loaded, output, input_size=input_size, batch=batch, dynamic_size=dynamic_size, opset=opset,
                    fp16=fp16, do_simplify=not no_simplify, form=chooser, target=target, self_check=not no_check,
                    keep_failed=keep_failed, allow_unlowered=allow_unlowered, on_stage=say, progress=not quiet)
    for note in result.warnings:
        click.echo(f"warning: {note}", err=True)
    if report_path:
        with open(report_path, "w") as f:
            json.dump({"rewrite": result.report.to_dict(), "ops": result.ops, "timings_s": result.timings,
                       "metadata": result.metadata}, f, indent=2)
    click.echo(f"rewrite: {result.report.summary()}")
    click.echo(f"graph:   {result.node_count} nodes ({', '.join(f'{n} {op}' for op, n in list(result.ops.items())[:6])}, ...)")
    if result.self_check is not None:
        click.echo(result.self_check.summary())
    click.echo(f"wrote {result.path} in {result.timings['total_s']:.1f} s")
