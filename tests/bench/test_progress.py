"""Progress of a bench run: plain lines without a terminal (a CI log), a bar on one, nothing when disabled."""

from __future__ import annotations

import io

from dcd_deploy.bench.progress import BarProgress, LineProgress, NoProgress, progress_printer


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_per_stage_per_row_and_a_heartbeat():
    out, clock = io.StringIO(), _Clock()
    progress = LineProgress(out, every=10.0, clock=clock)
    progress("preparing", 0, 4, "naive: plain torch.onnx.export")
    clock.now += 60
    progress("preparing", 4, 4, "")
    for i, label in enumerate(["cpu b1 eager", "cpu b1 static"]):
        progress("setting up", i, 2, label)
    progress("setting up", 2, 2, "")
    for r in range(100):  # one call per round, 0.5 s each: a heartbeat every 10 s, not a line per round
        clock.now += 0.5
        progress("measuring", r, 100, "")
    progress("measuring", 100, 100, "")
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[    0.0s] preparing 0/4: naive: plain torch.onnx.export"
    assert lines[1] == "[   60.0s] preparing done in 60.0 s"
    assert lines[2].endswith("setting up 0/2: cpu b1 eager") and lines[3].endswith("setting up 1/2: cpu b1 static")
    assert lines[4].endswith("setting up done in 0.0 s")
    measuring = [line for line in lines if "measuring" in line]
    assert measuring[0].endswith("measuring 0/100") and measuring[-1].endswith("measuring done in 49.5 s")
    assert 5 <= len(measuring) <= 8  # start, about one heartbeat per 10 s of 50 s, done
    assert len(lines) == 5 + len(measuring)


def test_a_finished_stage_is_not_reported_twice():
    out = io.StringIO()
    progress = LineProgress(out, clock=_Clock())
    progress("warming up", 0, 2, "")
    progress("warming up", 2, 2, "")
    progress("warming up", 2, 2, "")
    assert out.getvalue().count("done") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_printer_follows_the_stream():
    assert isinstance(progress_printer(True, io.StringIO()), LineProgress)
    assert isinstance(progress_printer(True, _Terminal()), BarProgress)
    silent = progress_printer(False, io.StringIO())
    assert isinstance(silent, NoProgress)
    silent("measuring", 1, 2, "")
    silent.close()


def test_the_bar_draws_on_a_terminal_and_clears_on_close():
    term = _Terminal()
    bar = progress_printer(True, term)
    bar("measuring", 0, 10, "")
    bar("measuring", 10, 10, "")
    bar.close()
    assert "measuring" in term.getvalue()
