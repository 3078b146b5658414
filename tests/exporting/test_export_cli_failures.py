"""``dcd-deploy export`` on bad input, exporter failures and Ctrl-C: one paragraph, the documented exit
code, no traceback, no file. Run as real processes where the terminal itself is the subject."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from dcd_deploy_cli.main import cli
from dcd_deploy_cli.options import reports_user_errors

from dcd_deploy.exporting.options import supported_opsets
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

SIZE = 48
HERE = Path(__file__).resolve().parent
MAX_LINES = 25


def joined(text: str) -> str:
    """``text`` as one line: error paragraphs are wrapped at the terminal's width."""
    return " ".join(text.split())


def squashed(text: str) -> str:
    """``text`` without any whitespace: a long path may be wrapped in its middle."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = calibrate_batchnorm(create_model("mobilenetv2_dcd", num_classes=10, width_mult=0.25, fc_squeeze=8), SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "mbv2.pth"
    torch.save({"arch": "mobilenetv2_dcd", "state_dict": model.state_dict()}, path)
    return path


def run_cli(*args: str, tmpdir: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "dcd_deploy_cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


def assert_one_paragraph(output: str, code: int, expected_code: int) -> None:
    assert code == expected_code, output
    assert "Traceback" not in output and len(output.splitlines()) <= MAX_LINES, output
    assert "error:" in output


def _output(tmp_path: Path, case: str) -> str:
    if case == "folder":
        return str(tmp_path)
    if case == "missing folder":
        return str(tmp_path / "no" / "such" / "m.onnx")
    if case == "proc":
        return "/proc/x.onnx"
    if case == "device":
        return "/dev/null"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["folder", "missing folder", "proc", "device"])
def test_unwritable_output_fails_before_any_work(tmp_path, checkpoint, case):
    if case in ("proc", "device") and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    res = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", _output(tmp_path, case), "--input-size", str(SIZE)])
    assert_one_paragraph(res.output, res.exit_code, 2)
    assert "loading" not in res.output and "lowering" not in res.output  # nothing was done first
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unwritable_report_fails_before_any_work(tmp_path, checkpoint):
    res = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"),
                                   "--report", str(tmp_path / "no" / "r.json")])
    assert_one_paragraph(res.output, res.exit_code, 2)
    assert "--report" in joined(res.output) and "loading" not in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [5, supported_opsets().start - 1, supported_opsets()[-1] + 1, 99])
def test_opset_outside_the_supported_range_is_a_usage_error(tmp_path, checkpoint, opset):
    res = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--opset", str(opset)])
    assert_one_paragraph(res.output, res.exit_code, 2)
    opsets = supported_opsets()
    assert f"--opset {opset}" in joined(res.output) and f"between {opsets.start} and {opsets[-1]}" in joined(res.output)
    assert "loading" not in res.output and list(tmp_path.iterdir()) == []


def make_routed_net(num_classes: int = 10) -> torch.nn.Module:
    """``--model`` factory: a network whose dynamic convolution dcd-deploy does not recognise (the
    routed kernels applied by a Python loop over the samples: no family, not the batch-folded idiom)."""
    from test_stages import RoutedConv, routed_net

    class LoopedRoutedConv(RoutedConv):
        def forward(self, x):
            r = torch.sigmoid(self.route(x.mean((2, 3))))
            weight = (r @ self.bank).view(x.shape[0], self.cout, self.cin, self.k, self.k)
            return torch.cat([torch.nn.functional.conv2d(x[i:i + 1], weight[i], padding=self.k // 2)
                              for i in range(x.shape[0])])

    net = routed_net(num_classes)
    net[2] = LoopedRoutedConv(8, 8)
    return net


def test_an_unrecognised_dynamic_convolution_stops_before_the_exporter(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "routed.pth"
    torch.save(make_routed_net().state_dict(), ckpt)
    out = tmp_path / "routed.onnx"
    res = run_cli("export", str(ckpt), "-o", str(out), "--model", "test_export_cli_failures:make_routed_net",
                  "--input-size", "16")
    terminal = res.stdout + res.stderr
    assert_one_paragraph(terminal, res.returncode, 2)
    assert "LoopedRoutedConv" in terminal and "one convolution per sample" in joined(terminal)
    assert "graph(" not in terminal and not out.exists()


def test_the_batch_folded_routed_convolution_exports_through_the_generic_family(tmp_path):
    torch.manual_seed(0)
    from test_stages import routed_net

    ckpt = tmp_path / "routed.pth"
    torch.save(routed_net().state_dict(), ckpt)
    out = tmp_path / "routed.onnx"
    res = run_cli("export", str(ckpt), "-o", str(out), "--model", "test_stages:routed_net", "--input-size", "16")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1/1 dynamic layers lowered" in res.stdout + res.stderr and out.exists()


def test_a_network_that_computes_nan_is_named_as_broken_once(tmp_path):
    """Weights that make the original compute NaN: every DCD layer fails its check for that one reason,
    said once for all of them, not "its forward() is not the reference one" per layer."""
    torch.manual_seed(0)
    model = calibrate_batchnorm(create_model("mobilenetv2_dcd", num_classes=10, width_mult=0.25, fc_squeeze=8), SIZE)
    with torch.no_grad():
        model.features[0][0].weight.fill_(float("nan"))  # the stem: every layer after it sees NaN
    ckpt = tmp_path / "nan.pth"
    torch.save({"arch": "mobilenetv2_dcd", "state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "nan.onnx"
    res = run_cli("export", str(ckpt), "-o", str(out), "--input-size", str(SIZE))
    terminal = joined(res.stdout + res.stderr)
    assert_one_paragraph(res.stdout + res.stderr, res.returncode, 2)
    assert terminal.count("computes NaN or inf") == 1 and "untrained or diverged" in terminal
    assert "not the reference one" not in terminal and not out.exists()


def make_mixing_net(num_classes: int = 10) -> torch.nn.Module:
    """``--model`` factory: a computed kernel convolving the batch folded into the channels with ONE
    group (it mixes the samples): neither a family nor the batch-folded idiom, and torch.onnx refuses
    it with a dynamic batch ("kernel of unknown shape")."""
    from test_stages import RoutedConv, routed_net

    class MixingConv(RoutedConv):
        def forward(self, x):
            b, _, h, w = x.shape
            r = torch.sigmoid(self.route(x.mean((2, 3))))
            weight = (r @ self.bank).view(b, self.cout, self.cin, self.k, self.k).transpose(0, 1)
            y = torch.nn.functional.conv2d(x.reshape(1, -1, h, w), weight.reshape(self.cout, -1, self.k, self.k),
                                           padding=self.k // 2)
            return y.expand(b, -1, -1, -1)

    net = routed_net(num_classes)
    net[2] = MixingConv(8, 8)
    return net


@pytest.mark.parametrize("quiet", [False, True])
def test_exporter_failure_is_one_paragraph_and_names_the_log(tmp_path, quiet):
    """With --allow-unlowered the unrecognised layer reaches torch.onnx, which fails: one paragraph + a log."""
    torch.manual_seed(0)
    ckpt = tmp_path / "routed.pth"
    torch.save(make_mixing_net().state_dict(), ckpt)
    logs = tmp_path / "tmp"
    logs.mkdir()
    out = tmp_path / "routed.onnx"
    res = run_cli("export", str(ckpt), "-o", str(out), "--model", "test_export_cli_failures:make_mixing_net",
                  "--input-size", "16", "--allow-unlowered", *(["-q"] if quiet else []), tmpdir=logs)
    terminal = res.stdout + res.stderr
    assert_one_paragraph(terminal, res.returncode, 2)
    assert "graph(" not in terminal and "%" not in terminal  # no IR dump
    (log,) = logs.glob("dcd-deploy-export-routed-*.log")
    assert squashed(str(log)) in squashed(res.stderr) and "graph(" in log.read_text()
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["routed.pth", "tmp"]


@pytest.mark.parametrize("stage", ["exporting ONNX", "self-check on ONNX Runtime CPU"])
def test_ctrl_c_exits_130_and_leaves_no_file(tmp_path, checkpoint, stage):
    out_dir, scratch = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "dcd_deploy_cli.main", "export", str(checkpoint), "-o",
                             str(out_dir / "m.onnx"), "--input-size", "96", "--report", str(out_dir / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stderr:  # the stage lines arrive as they happen
        seen.append(line)
        if stage in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=120)
    terminal = stdout + "".join(seen) + rest
    assert proc.returncode == 130, terminal
    assert "interrupted" in rest and "Traceback" not in terminal
    assert list(out_dir.iterdir()) == []  # neither the model, nor the report, nor a temporary file
    assert list(scratch.glob("dcd-deploy-*")) == []  # nor the exporter's log


def test_every_command_turns_ctrl_c_into_exit_130():
    @click.command()
    @reports_user_errors
    def command() -> None:
        raise KeyboardInterrupt

    res = CliRunner().invoke(command, [])
    assert res.exit_code == 130 and res.output.strip() == "error: interrupted (Ctrl-C)."
