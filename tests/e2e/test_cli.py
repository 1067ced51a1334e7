"""The `hotswap` command line as a user meets it (no training here; the lifecycle is covered
by tests/integration/test_flows.py and the demo test)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from hotswap.flows.cli import app
from typer.testing import CliRunner

runner = CliRunner()
HOTSWAP = Path(sys.executable).with_name("hotswap")


def test_help_lists_every_lifecycle_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "demo",
        "bootstrap",
        "refresh",
        "promote",
        "backfill",
        "audit",
        "search",
        "status",
        "report",
        "data",
        "serve",
        "rollback",
    ):
        assert command in result.output


def test_status_of_an_empty_home_says_nothing_is_live(tmp_path):
    result = runner.invoke(app, ["status", "--json", "--home", str(tmp_path)])
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
    assert result.returncode == 3  # the "state" class (components/core/errors.py)
    assert "error:" in result.stdout and "champion" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_serve_before_anything_is_live_answers_503_with_the_reason(tmp_path, sqlite_tracking_uri):
    """`hotswap serve` starts on an empty home, says why nothing is live, and follows later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HOTSWAP_TRACKING_URI": sqlite_tracking_uri, "HOTSWAP_MODEL_NAME": "cli-serve-empty"}
    command = [
        sys.executable,
        "-m",
        "hotswap.flows.cli",
        "serve",
        "--home",
        str(tmp_path),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240  # readiness wait for a subprocess, not a limit on the test
        health = None
        while health is None:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "hotswap serve did not start"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health.status_code == 503
        assert "no champion alias" in health.json()["detail"]
        assert httpx.get(f"http://127.0.0.1:{port}/live").json()["model_version"] is None
        search = httpx.post(f"http://127.0.0.1:{port}/search/item", json={"item_id": "mnist5k-00001"})
        assert search.status_code == 503 and "no model and gallery are live yet" in search.json()["detail"]
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_promote_without_a_server_or_an_answer_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = runner.invoke(app, ["promote", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "PREFECT_API_URL" in result.output and "--approve/--reject" in result.output


def test_report_of_an_unknown_version_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [str(HOTSWAP), "report", "7", "--home", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 3  # a state failure (components/core/errors.py): no such version
    assert "error:" in result.stdout and "'7'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
