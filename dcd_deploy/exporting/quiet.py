"""Keep the exporters' own printing off the terminal.

torch.onnx prints from Python (``print``, warnings, logging) and from C++ straight to file
descriptors 1 and 2, where no ``redirect_stdout`` reaches: a network it cannot export can dump
its whole TorchScript graph, a thousand lines, even under ``-q``. :func:`quiet` catches all of it
and, given a log file, keeps it there so that an error message can point at the full dump.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import BinaryIO

# Loggers of the exporters (and what they call) that talk below ERROR.
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")


@contextlib.contextmanager
def redirect_fds(sink: BinaryIO) -> Iterator[None]:
    """Send file descriptors 1 and 2 to ``sink`` (a real file) and restore them afterwards, always."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a broken Python-level stream must not keep fd 1 redirected
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def silence_fds() -> Iterator[None]:
    """Discard what C/C++ code prints to file descriptors 1 and 2."""
    with tempfile.TemporaryFile() as sink, redirect_fds(sink):
        yield


@contextlib.contextmanager
def quiet(log: BinaryIO | None = None) -> Iterator[None]:
    """Silence printing from Python and C++, warnings and the exporters' logging.

    With ``log`` (a binary file), what was printed is appended to it, the warnings after it, one per
    line; without, it is discarded.
    """
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    python_side = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(redirect_fds(log) if log is not None else silence_fds())
            stack.enter_context(contextlib.redirect_stdout(python_side))
            stack.enter_context(contextlib.redirect_stderr(python_side))
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always" if log is not None else "ignore")
            try:
                yield
            finally:
                if log is not None:
                    lines = [python_side.getvalue()] + [f"{w.category.__name__}: {w.message}\n" for w in caught]
                    log.seek(0, io.SEEK_END)  # after what C++ wrote through the shared descriptor
                    log.write("".join(lines).encode("utf-8", "replace"))
                    log.flush()
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
