"""Helpers and fixtures of the serving tests (tests/serve): a small exported model, free ports, a real server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "mobilenetv2_dcd_w035_digits.pth"
SIZE = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_sample(path: Path, **options) -> Path:
    import torch

    import dcd_deploy
    from dcd_deploy.load.model import load_model

    torch.set_num_threads(1)
    dcd_deploy.export(load_model(SAMPLE), path, input_size=SIZE, **options)
    return path


@pytest.fixture(scope="session")
def served_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled w035 digits sample exported at 48×48 with a dynamic batch axis. Do not modify."""
    return export_sample(tmp_path_factory.mktemp("serve") / "digits.onnx")


@pytest.fixture(scope="session")
def fixed_batch_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sample exported with a fixed batch of 2."""
    return export_sample(tmp_path_factory.mktemp("serve") / "digits_b2.onnx", batch=2)


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's own output for ``x`` (the first output), run in the test."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, proc: subprocess.Popen, model: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited {proc.returncode}:\n{out}")
        try:
            if get(f"{url}/v2/models/{model}/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server at {url} not ready after {timeout} s")


class Server:
    """``dcd-deploy serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, model: Path, *args: str, name: str = "digits", ready_timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.name = name
        cmd = [sys.executable, "-m", "dcd_deploy_cli.main", "serve", str(model), "--name", name,
               "--port", str(self.port), "--threads", "1", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            wait_ready(self.url, self.proc, name, ready_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, str, float]:
        """Send ``sig``; the exit status, the output and how long the exit took."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            return -9, out, time.monotonic() - start
        return self.proc.returncode, out, time.monotonic() - start


@pytest.fixture(scope="module")
def server(served_onnx: Path) -> Iterator[Server]:
    """A default server (max batch 8) shared by a test module; stopped with SIGTERM at the end."""
    srv = Server(served_onnx, "--max-batch", "8")
    yield srv
    srv.stop()
