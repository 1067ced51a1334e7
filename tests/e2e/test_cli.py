"""The `hotswap` command line as a user meets it (no training here; the lifecycle is covered
by tests/integration/test_flows.py and the demo test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
HOTSWAP = Path(sys.executable).with_name("hotswap")


def test_help_lists_every_lifecycle_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "bootstrap", "refresh", "promote", "backfill", "audit", "search", "status"):
        assert command in result.output


def test_status_of_an_empty_home_says_nothing_is_live(tmp_path):
    result = runner.invoke(app, ["status", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["champion"] is None and status["live_gallery_version"] is None


def test_search_needs_exactly_one_query(tmp_path):
    result = runner.invoke(app, ["search", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "exactly one of --image or --item-id" in result.output


def test_search_before_bootstrap_is_one_clear_line_not_a_traceback(tmp_path):
    result = subprocess.run(
        [str(HOTSWAP), "search", "--home", str(tmp_path), "--item-id", "mnist5k-00001"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 3  # the "state" class (components/errors.py)
    assert "error:" in result.stdout and "champion" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
