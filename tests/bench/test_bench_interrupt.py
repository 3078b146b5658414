"""Ctrl-C during bench's slow preparation stops the run with exit 130 and writes no report.

torch.export (the naive row) catches every exception and can turn a KeyboardInterrupt into an error
of its own; the run must stop anyway, not record the row as failed and go on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_in_the_naive_export_exits_130_and_writes_nothing(tmp_path):
    report = tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, "-m", "dcd_deploy_cli.main", "bench",
                             str(ROOT / "sample_models" / "mobilenetv2_dcd_w025_digits.pth"), "--input-size", "48",
                             "--runs", "3", "--warmup", "0", "--json", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen = []
    for line in proc.stderr:  # without a terminal, one line per stage
        seen.append(line)
        if "naive" in line:
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=300)
    tail = "".join(seen) + rest
    assert proc.returncode == 130, tail
    assert "interrupted (Ctrl-C)" in tail and "Traceback" not in tail
    assert not report.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
