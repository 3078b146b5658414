"""One exception family for user errors.

Anything raised as a :class:`DcdDeployError` is a problem with the user's input or environment:
the command line prints its message as one paragraph and exits with ``exit_code``. Anything else
is a bug in dcd-deploy and surfaces with its traceback.
"""

from __future__ import annotations

import re
import textwrap


class DcdDeployError(Exception):
    """A user-facing error: says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.strip()
        self.fix = fix.strip() if fix else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} {self.fix}" if self.fix else self.problem

    def render(self, width: int = 100) -> str:
        return textwrap.fill(f"error: {self.message}", width=width, break_on_hyphens=False, break_long_words=False)


class CheckpointError(DcdDeployError):
    """The checkpoint file cannot be read or does not hold what was expected."""


class ArchitectureError(DcdDeployError):
    """The architecture (given or inferred) does not fit the checkpoint."""


class InputError(DcdDeployError):
    """Input data or an input shape is unusable."""


class LoweringError(DcdDeployError):
    """A model could not be lowered or exported."""


class ProviderUnavailableError(DcdDeployError):
    """A requested ONNX Runtime execution provider is not available here."""

    exit_code = 3


class ParityFailure(DcdDeployError):
    """ONNX Runtime does not compute what the PyTorch model computes."""

    exit_code = 1


class NothingMeasured(DcdDeployError):
    """``dcd-deploy bench`` measured no row: every row failed (each row's reason is in the report)."""


# Boilerplate that torch appends to exporter errors; it says nothing about the user's model.
_BOILERPLATE = ("Please feel free to request support", "[Caused by", "(Refer to the full stack trace", "(Size-like symbols")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_message_line(exc: BaseException) -> str:
    """The first non-blank line of ``str(exc)``, without colour codes or torch's boilerplate; '' when none."""
    text = next((line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()), "")
    for phrase in _BOILERPLATE:
        text = text.split(phrase)[0].strip()
    return text


def summarize_exception(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters of message; never raises.

    An empty message gives the type name alone. When the exception wraps another (``raise ... from``),
    the root cause follows the wrapper's first sentence in parentheses: torch's dynamo exporter wraps
    the real reason.
    """
    root, depth = exc, 0
    while root.__cause__ is not None and depth < 10:
        root, depth = root.__cause__, depth + 1
    text = _first_message_line(exc)
    if root is not exc:
        cause = _first_message_line(root)
        cause = f"{type(root).__name__}: {cause}" if cause else type(root).__name__
        text = f"{text.split('. ')[0].rstrip('.')} ({cause})" if text else f"({cause})"
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OutputError(DcdDeployError):
    """An output file (the ONNX model, a report) cannot be written where the user asked."""


class ExportFailed(DcdDeployError):
    """torch.onnx could not export the lowered network (the exporter's own output is in a log file)."""


class SelfCheckFailed(DcdDeployError):
    """The exported graph, run on ONNX Runtime CPU, does not compute what the original model computes."""

    exit_code = 1


class Interrupted(DcdDeployError):
    """The user pressed Ctrl-C (SIGINT): the run stopped, temporary files were removed, nothing was written."""

    exit_code = 130

    def __init__(self, problem: str = "interrupted (Ctrl-C).", fix: str | None = None):
        super().__init__(problem, fix)


_SIGINT_SEEN: list[bool] = []


def watch_interrupts() -> None:
    """Remember every Ctrl-C (SIGINT) before raising KeyboardInterrupt as Python does.

    Libraries that catch every exception (torch.export, onnxsim) can swallow the KeyboardInterrupt, or
    turn it into an error of their own; :func:`raise_if_interrupted` after such a call restores it.
    """
    import signal

    def handler(signum: int, frame: object) -> None:
        _SIGINT_SEEN.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since :func:`watch_interrupts` (call it in an
    ``except`` that catches every exception)."""
    if _SIGINT_SEEN:
        raise KeyboardInterrupt


class AccuracyDrop(DcdDeployError):
    """``dcd-deploy evaluate --max-drop``: the ONNX model's top-1 fell further below the original's than allowed."""

    exit_code = 1
