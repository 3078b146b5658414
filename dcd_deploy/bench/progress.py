"""Progress of a bench run on the terminal: a bar on a terminal, plain lines in a log.

Both are callables ``(stage, done, total, detail)`` (:data:`dcd_deploy.runtime.timing.Progress`)
with a ``close()``. The stages are ``preparing`` (making each row's artifact), ``setting up`` (one
runner per row, provider and batch size), ``warming up`` and ``measuring`` (rounds). Without a
terminal (a CI log) :class:`LineProgress` writes one line when a stage starts, one per row it
works on, one when it ends, and a heartbeat line at least every ``every`` seconds of a long stage,
so a log never sits silent while rounds run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any


def _count(done: float, total: float) -> str:
    return f"{done:.0f}/{total:.0f}"


class LineProgress:
    """Plain progress lines, each prefixed with the seconds since the run started."""

    def __init__(self, stream: IO[str] | None = None, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.clock = every, clock
        self.start = self.stage_start = self.last = clock()
        self.stage: str | None = None
        self.detail = ""
        self.finished = False

    def _line(self, text: str) -> None:
        now = self.clock()
        self.last = now
        print(f"[{now - self.start:7.1f}s] {text}", file=self.stream, flush=True)

    def __call__(self, stage: str, done: float, total: float, detail: str) -> None:
        now = self.clock()
        if stage != self.stage:
            self.stage, self.stage_start, self.detail, self.finished = stage, now, "", False
            if not detail:
                self._line(f"{stage} {_count(done, total)}")
        if self.finished:
            return
        if detail and detail != self.detail:
            self.detail = detail
            self._line(f"{stage} {_count(done, total)}: {detail}")
        elif done >= total:
            self.finished = True
            self._line(f"{stage} done in {now - self.stage_start:.1f} s")
        elif now - self.last >= self.every:
            self._line(f"{stage} {_count(done, total)}")

    def close(self) -> None:
        """Nothing to clear: every line is final."""


class BarProgress:
    """One progress bar per stage on a terminal (``tqdm``), redrawn at most five times a second."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.stage: str | None = None
        self.bar: Any = None
        self.last = 0.0
        self.detail = ""

    def __call__(self, stage: str, done: float, total: float, detail: str) -> None:
        from tqdm.auto import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, leave=False, file=self.stream, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
        now = time.monotonic()
        if done < total and detail == self.detail and now - self.last < 0.2:
            return  # terminal writes between timed runs are kept rare
        self.last, self.detail = now, detail
        self.bar.n = done
        self.bar.set_postfix_str(detail, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class NoProgress:
    """Progress that shows nothing (``--no-progress``)."""

    def __call__(self, stage: str, done: float, total: float, detail: str) -> None:
        return None

    def close(self) -> None:
        return None


def progress_printer(enabled: bool = True, stream: IO[str] | None = None) -> BarProgress | LineProgress | NoProgress:
    """A bar when ``stream`` (default stderr) is a terminal, plain lines when it is not, nothing when disabled."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return NoProgress()
    return BarProgress(stream) if stream.isatty() else LineProgress(stream)


__all__ = ["BarProgress", "LineProgress", "NoProgress", "progress_printer"]
