"""``dcd-deploy loadtest`` against the real server: per-level throughput, percentiles, errors, JSON and HTML."""

from __future__ import annotations

import json

from serving_fixtures import free_port


def test_levels_json_and_html(server, tmp_path, run_cli):
    out_json, out_html = tmp_path / "load.json", tmp_path / "load.html"
    result = run_cli("loadtest", server.host, "--model", server.name, "--concurrency", "1,4", "--requests", "24",
                     "--json", out_json, "--html", out_html)
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert [lv["concurrency"] for lv in data["levels"]] == [1, 4]
    for level in data["levels"]:
        assert level["errors"] == 0 and level["answered"] == 24 and level["requests"] == 24
        assert level["throughput"] > 0
        assert 0 < level["p50"] <= level["p90"] <= level["p99"]
    assert data["input"] == {"name": "input", "datatype": "FP32", "shape": [1, 3, 48, 48]}
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "throughput" in page
    assert "p50 ms" in result.output and "concurrency" in result.output


def test_duration_mode(server, run_cli):
    result = run_cli("loadtest", f"http://{server.host}", "--model", server.name, "--concurrency", "2", "--duration", "0.5")
    assert result.exit_code == 0, result.output


def test_usage_errors(server, run_cli, expect_user_error):
    expect_user_error(run_cli("loadtest", server.host, "--model", "nope", "--requests", "2"), "does not serve model 'nope'")
    expect_user_error(run_cli("loadtest", f"127.0.0.1:{free_port()}", "--model", "x", "--requests", "2"), "Cannot reach")
    expect_user_error(run_cli("loadtest", server.host, "--model", server.name), "--requests")
    expect_user_error(run_cli("loadtest", server.host, "--model", server.name, "--requests", "1", "--concurrency", "0"), "positive")


def test_help_imports_no_serving_stack():
    """``dcd-deploy --help`` and the serving commands' help stay light: ray, tritonclient, uvicorn load on use."""
    import subprocess
    import sys

    for args in (["--help"], ["serve", "--help"], ["loadtest", "--help"], ["repo", "--help"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "dcd_deploy_cli.main", *args],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "dcd_deploy_cli.commands.serve" in modules
        assert not sorted(m for m in modules if m.split(".")[0] in ("ray", "tritonclient", "uvicorn", "starlette", "torch"))
