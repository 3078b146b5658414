"""Option groups shared by several commands, declared once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from dcd_deploy.errors import DcdDeployError


def loading_options(f: Callable) -> Callable:
    """How to build the network a checkpoint needs (all optional: inferred from the file)."""
    options = [
        click.option("--arch", help="Registered architecture (see `dcd-deploy archs`); inferred when omitted."),
        click.option("--width-mult", type=float, help="MobileNetV2 width multiplier (checked against the file)."),
        click.option("--fc-squeeze", type=int, help="MobileNetV2 DYModule squeeze divisor (checked against the file)."),
        click.option("--num-classes", type=int, help="Number of classes (checked against the file)."),
        click.option("--dropout", type=float, help="Dropout rate before the head (decides the head's key index)."),
        click.option("--model", "model_factory", metavar="PKG.MODULE:FACTORY",
                     help="Build your own network containing DCD layers instead of a registered one."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for --model's factory (repeatable)."),
        click.option("--trust-pickle", is_flag=True,
                     help="Allow checkpoints that are whole pickled modules (unpickling runs code from the file)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_from_options(checkpoint: str, arch: str | None, width_mult: float | None, fc_squeeze: int | None,
                      num_classes: int | None, dropout: float | None, model_factory: str | None,
                      model_args: tuple[str, ...], trust_pickle: bool, **_: Any):
    """Call :func:`dcd_deploy.load_model` with the options of :func:`loading_options`."""
    from dcd_deploy.load.model import load_model, parse_model_args

    options = {"width_mult": width_mult, "fc_squeeze": fc_squeeze, "num_classes": num_classes, "dropout": dropout}
    given = {k: v for k, v in options.items() if v is not None}
    if model_factory is None and arch is None and given:
        from dcd_deploy.errors import ArchitectureError

        raise ArchitectureError(f"{', '.join('--' + k.replace('_', '-') for k in given)} given without --arch.",
                                "Pass --arch too, or leave the options out to infer them from the file.")
    return load_model(checkpoint, arch=arch, options=given, model_factory=model_factory,
                      model_args=parse_model_args(model_args) if model_args else None, trust_pickle=trust_pickle)


LOADING_KEYS = ("arch", "width_mult", "fc_squeeze", "num_classes", "dropout", "model_factory", "model_args", "trust_pickle")


def pop_loading(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in LOADING_KEYS}


def parse_input_size(_ctx: Any, _param: Any, value: str | int) -> tuple[int, int]:
    """``224`` or ``224x192`` (height x width) to ``(height, width)``."""
    from dcd_deploy.errors import InputError
    from dcd_deploy.compare.inputs import parse_size

    try:
        return parse_size(value)
    except InputError:
        raise click.BadParameter(f"{value!r} is not a size; write 224 or 224x192 (height x width).") from None


def input_size_option(default: str = "224", help: str = "Input height and width (N or HxW).") -> Callable:
    return click.option("--input-size", default=default, show_default=True, callback=parse_input_size,
                        metavar="N|HxW", help=help)


def providers_option(default: str = "cpu") -> Callable:
    return click.option("--providers", default=default, show_default=True, metavar="LIST",
                        help="Comma-separated ONNX Runtime execution providers: cpu, cuda (or full names).")


def reports_user_errors(f: Callable) -> Callable:
    """Turn :class:`DcdDeployError` into a one-paragraph message and its exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except DcdDeployError as exc:
            click.echo(exc.render(), err=True)
            raise SystemExit(exc.exit_code) from None

    return wrapper
