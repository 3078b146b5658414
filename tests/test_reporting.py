"""Shared output helpers: JSON-safe values, text tables, files written whole with the umask's mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dcd_deploy.errors import OutputError
from dcd_deploy.reporting import check_output_path, json_safe, table, to_json, umask_mode, write_output


def test_json_safe_values():
    raw = {"a": float("nan"), "b": [np.float32(1.5), np.int64(3), np.bool_(True)], 1: (np.inf, -np.inf),
           "p": Path("x/y"), "arr": np.arange(3)}
    safe = json_safe(raw)
    assert safe == {"a": None, "b": [1.5, 3, True], "1": [None, None], "p": "x/y", "arr": [0, 1, 2]}
    assert json.loads(to_json(raw)) == safe and to_json(raw).endswith("\n")


def test_table_aligns_columns():
    text = table(["name", "ms"], [["a", "1.0"], ["long name", "12.5"]], align="lr")
    lines = text.splitlines()
    assert lines[0] == "name         ms" and lines[1] == "---------  ----"
    assert lines[2] == "a           1.0" and lines[3] == "long name  12.5"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_output_is_written_whole_with_the_umask_mode(tmp_path, mask):
    before = os.umask(mask)
    try:
        path = write_output(tmp_path / "r.json", "{}\n", "report")
        assert path.read_text() == "{}\n" and path.stat().st_mode & 0o777 == 0o666 & ~mask == umask_mode()
    finally:
        os.umask(before)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_unwritable_outputs_raise_output_errors(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "r.json", "report")
    with pytest.raises(OutputError, match="folder"):
        write_output(tmp_path, "x", "report")
    with pytest.raises(OutputError, match="Cannot write the report"):
        write_output("/proc/dcd-deploy-test.json", "x", "report")
    assert OutputError("x").exit_code == 2
