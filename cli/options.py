"""Option groups shared by several commands, declared once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from dcd_deploy.errors import DcdDeployError, Interrupted


def apply_options(f: Callable, options: list[Callable]) -> Callable:
    """``f`` decorated with ``options`` (click decorators), listed in the order ``--help`` shows them."""
    for option in reversed(options):
        f = option(f)
    return f


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
    return apply_options(f, options)


def load_from_options(checkpoint: str, arch: str | None, width_mult: float | None, fc_squeeze: int | None,
                      num_classes: int | None, dropout: float | None, model_factory: str | None,
                      model_args: tuple[str, ...], trust_pickle: bool, **_: Any):
    """Call :func:`dcd_deploy.load_model` with the options of :func:`loading_options`."""
    from dcd_deploy.load.model import load_model, parse_model_args

    options = {"width_mult": width_mult, "fc_squeeze": fc_squeeze, "num_classes": num_classes, "dropout": dropout}
    given = {k: v for k, v in options.items() if v is not None}
    return load_model(checkpoint, arch=arch, options=given, model_factory=model_factory,
                      model_args=parse_model_args(model_args) if model_args else None, trust_pickle=trust_pickle)


LOADING_KEYS = ("arch", "width_mult", "fc_squeeze", "num_classes", "dropout", "model_factory", "model_args", "trust_pickle")


def pop_loading(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in LOADING_KEYS}


def parse_input_size(_ctx: Any, _param: Any, value: str | int) -> tuple[int, int]:
    """``224`` or ``224x192`` (height x width) to ``(height, width)``."""
    from dcd_deploy.errors import InputError
    from dcd_deploy.runtime.onnxfile import parse_size

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
    """Turn :class:`DcdDeployError` into a one-paragraph message and its exit code, and Ctrl-C
    (KeyboardInterrupt) into one line and exit status 130, for every command."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except DcdDeployError as exc:
            click.echo(exc.render(), err=True)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C: the library removed its temporary files on the way out
            interrupted = Interrupted()
            click.echo(interrupted.render(), err=True)
            raise SystemExit(interrupted.exit_code) from None

    return wrapper


class LibraryChoice(click.Choice):
    """``click.Choice`` over a library constant, imported the first time the choices are needed.

    Declaring a command then does not import the library module (``dcd-deploy --help`` stays free
    of torch); the choices are never written twice.
    """

    def __init__(self, module: str, name: str):
        self._source = (module, name)
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        import importlib

        module, name = self._source
        return tuple(getattr(importlib.import_module(module), name))


def stage_printer(quiet: bool) -> Callable[[str], None]:
    """A callback printing ``[  elapsed s] message`` lines to stderr, or nothing when ``quiet``."""
    import time

    start = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    return say


def parse_floats(_ctx: Any, _param: Any, value: str | None) -> tuple[float, ...] | None:
    """``'0.485,0.456,0.406'`` to a tuple of floats (None stays None)."""
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers (e.g. 0.485,0.456,0.406).")
    return values


def normalisation_options(f: Callable) -> Callable:
    """``--mean`` / ``--std``: per-channel normalisation of images read from folders."""
    f = click.option("--std", callback=parse_floats, metavar="LIST", help="Per-channel std for images [default: ImageNet's].")(f)
    return click.option("--mean", callback=parse_floats, metavar="LIST",
                        help="Per-channel mean for images [default: ImageNet's].")(f)


def optional_size_option(help: str) -> Callable:
    """``--input-size`` without a default (None: the size the model or its metadata gives)."""
    def callback(ctx: Any, param: Any, value: str | None) -> tuple[int, int] | None:
        return None if value is None else parse_input_size(ctx, param, value)

    return click.option("--input-size", callback=callback, metavar="N|HxW", help=help)
