"""Serving benchmark: `dcd-deploy serve` under concurrent load, against ONNX Runtime run directly.

For each network (random weights with calibrated BatchNorms: latency does not depend on the
values) exported by ``dcd_deploy.export`` at ``--size`` with a dynamic batch axis:

* ``ort``: the file on ONNX Runtime directly, in this process (intra-op spinning off, all cores):
  the median latency at batch 1, and throughput (batch / median) at batches 1, 2, 4, 8, 16; the best of
  these is the throughput the server is compared with. It is measured again just before each server
  configuration, and each server is compared with the measurement next to it (the load of a shared
  machine drifts over the minutes a run takes); with ``--rounds N`` each configuration is measured N times
  (ONNX Runtime direct, then the server) and the table gives the medians over rounds;
* each server (``--modes``: ``local`` = the default in-process server, ``ray`` = ``serve --ray`` on a
  local Ray instance, one replica) with each ``--max-batch``, started as the real command
  (``dcd-deploy serve``) on a free port of 127.0.0.1 and loaded with ``dcd_deploy.serve.loadtest``
  (tritonclient, binary tensors, single-image requests) at each concurrency for ``--duration`` seconds.
  Each server runs with ``--preferred-batch`` (default ``auto``: it measures its own best batch at
  start-up); the size it chose is read from its model metadata and written to the JSON per round.

The client runs on the same machine as the server (as in the issue's measurements), so on a
small CPU it takes cores from the server. Prints one table and writes JSON (``--json``).

    python benchmarks/serve_load.py                       # the BENCHMARKS.md "Serving" table
    python benchmarks/serve_load.py --models mobilenetv2_dcd --modes local --duration 5
    python benchmarks/serve_load.py --providers cuda --concurrency 1,8,32,64   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from dcd_deploy.exporting.pipeline import export
from dcd_deploy.reporting import table
from dcd_deploy.runtime.session import create_session
from dcd_deploy.serve.loadtest import loadtest
from dcd_deploy.sysinfo import machine, versions
from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

MODELS = {"resnet18_dcd": {}, "mobilenetv2_dcd": {"fc_squeeze": 16}}
ORT_BATCHES = (1, 2, 4, 8, 16)


def build(arch: str, size: int, path: Path) -> Path:
    torch.manual_seed(0)
    model = calibrate_batchnorm(create_model(arch, **MODELS[arch]), 64)  # as static_twin_ratio.py builds them
    export(model, path, input_size=size)
    return path


def ort_direct(path: Path, size: int, runs: int, threads: int | None, provider: str = "cpu") -> dict:
    """Median batch-1 latency (ms) and throughput per batch (img/s) on ONNX Runtime, spinning off."""
    session = create_session(path, provider, threads=threads, spinning=False)
    name = session.get_inputs()[0].name
    out = {"batch1_p50_ms": None, "throughput": {}}
    for batch in ORT_BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        for _ in range(3):
            session.run(None, {name: x})
        times = []
        for _ in range(max(3, runs // batch)):
            t0 = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        median = float(np.median(times))
        out["throughput"][batch] = batch / median
        if batch == 1:
            out["batch1_p50_ms"] = median * 1e3
    out["best_throughput"] = max(out["throughput"].values())
    out["best_batch"] = max(out["throughput"], key=out["throughput"].get)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, mode: str, max_batch: int, threads: int | None, log: Path,
                 provider: str = "cpu", preferred: str = "auto") -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "dcd_deploy_cli.main", "serve", str(path), "--name", "m", "--port", str(port),
           "--max-batch", str(max_batch), "--preferred-batch", preferred, "--providers", provider] + (["--threads", str(threads)] if threads else []) + (["--ray"] if mode == "ray" else [])
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v2/models/m/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server not ready after 180 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.terminate()  # SIGTERM: the server stops and exits 0
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def measure_server(path: Path, mode: str, max_batch: int, levels: list[int], duration: float, threads: int | None,
                   workdir: Path, provider: str = "cpu", preferred: str = "auto") -> list[dict]:
    proc, host = start_server(path, mode, max_batch, threads, workdir / f"{path.stem}-{mode}-{max_batch}.log", provider,
                              preferred)
    try:
        with urllib.request.urlopen(f"http://{host}/v2/models/m", timeout=30) as r:
            params = json.loads(r.read())["parameters"]
        chosen = {k: v for k, v in params.items() if k.startswith("preferred_batch")}
        loadtest(host, "m", [1], duration=min(2.0, duration))  # warm-up level, not reported
        result = loadtest(host, "m", levels, duration=duration)
    finally:
        code = stop_server(proc)
    rows = [lv.to_dict() for lv in result.levels]
    for row in rows:
        row.pop("error_messages", None)
        row["exit_code"] = code
        row["preferred"] = chosen
    return rows


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def measure_config(path: Path, arch: str, mode: str, max_batch: int, levels: list[int], args: argparse.Namespace,
                   workdir: Path) -> list[dict]:
    """One server configuration, ``--rounds`` times: ONNX Runtime direct just before each round's server
    (the load of a shared machine drifts), every level; per level the medians over rounds."""
    rounds = []
    for _ in range(args.rounds):
        direct = ort_direct(path, args.size, args.ort_runs, args.threads, args.providers)
        print(f"{arch} before {mode} --max-batch {max_batch}: ONNX Runtime direct batch 1 p50 "
              f"{direct['batch1_p50_ms']:.1f} ms; best {direct['best_throughput']:.1f} img/s at batch "
              f"{direct['best_batch']} (" + ", ".join(f"b{b} {t:.1f}" for b, t in direct["throughput"].items()) + ")",
              flush=True)
        rows = measure_server(path, mode, max_batch, levels, args.duration, args.threads, workdir, args.providers,
                              args.preferred_batch)
        print(f"  server's preferred batch: {rows[0]['preferred']}", flush=True)
        for row in rows:
            row.update(ort=direct, vs_ort_best=row["throughput"] / direct["best_throughput"],
                       p50_minus_ort_b1_ms=None if row["p50"] is None else row["p50"] - direct["batch1_p50_ms"])
        rounds.append(rows)
    out = []
    for i, concurrency in enumerate(levels):
        per_round = [r[i] for r in rounds]
        row = {"concurrency": concurrency, "mode": mode, "max_batch": max_batch,
               "preferred_batch": [r["preferred"].get("preferred_batch_size") for r in per_round],
               "errors": sum(r["errors"] for r in per_round), "answered": sum(r["answered"] for r in per_round),
               "exit_code": max(r["exit_code"] for r in per_round), "rounds": per_round,
               "ort": {"batch1_p50_ms": _median([r["ort"]["batch1_p50_ms"] for r in per_round]),
                       "best_throughput": _median([r["ort"]["best_throughput"] for r in per_round])}}
        for key in ("throughput", "p50", "p90", "p99", "vs_ort_best", "p50_minus_ort_b1_ms"):
            row[key] = _median([r[key] for r in per_round])
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--modes", default="local,ray")
    p.add_argument("--max-batches", default="16,1")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--rounds", type=int, default=1, help="repeat each server configuration (and its ONNX Runtime "
                   "direct measurement); the table gives medians over rounds")
    p.add_argument("--ort-runs", type=int, default=60, help="ONNX Runtime runs at batch 1 (fewer at larger batches)")
    p.add_argument("--providers", default="cpu", help="one ONNX Runtime provider, server and direct (cuda on a GPU machine)")
    p.add_argument("--preferred-batch", default="auto", help="the servers' --preferred-batch (auto: each server "
                   "measures its own at start-up; the choice of each round is in the JSON)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (server and direct). Default: all cores.")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    report = {"machine": machine(), "versions": versions(), "size": args.size, "duration_s": args.duration,
              "rounds": args.rounds,
              "provider": args.providers,
              "threads": args.threads, "preferred_batch": args.preferred_batch, "command": "python benchmarks/serve_load.py " + " ".join(argv or sys.argv[1:]),
              "models": {}}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for arch in args.models.split(","):
            path = build(arch, args.size, workdir / f"{arch}.onnx")
            entry = {"servers": []}
            for mode in args.modes.split(","):
                for max_batch in (int(b) for b in args.max_batches.split(",")):
                    for row in measure_config(path, arch, mode, max_batch, levels, args, workdir):
                        entry["servers"].append(row)
                        chosen = ",".join("/".join(map(str, p)) if p else "?" for p in row["preferred_batch"])
                        lines.append([arch, mode, str(max_batch), chosen, str(row["concurrency"]), f"{row['throughput']:.1f}",
                                      f"{row['vs_ort_best']:.2f}×", *(f"{row[k]:.1f}" if row[k] is not None else "—"
                                                                      for k in ("p50", "p90", "p99")),
                                      f"{row['ort']['batch1_p50_ms']:.1f}", f"{row['ort']['best_throughput']:.1f}",
                                      f"{row['p50_minus_ort_b1_ms']:+.1f}" if row["p50"] is not None else "—",
                                      str(row["errors"])])
            report["models"][arch] = entry
    print(table(["model", "server", "max-batch", "preferred", "conc.", "infer/s", "×ort best", "p50 ms", "p90 ms", "p99 ms",
                 "ort b1 ms", "ort best/s", "p50−ort b1", "errors"], lines, align="llllrrrrrrrrrr"))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
