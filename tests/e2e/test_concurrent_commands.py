"""Two lifecycle commands on one embedded home, and what a SIGKILL of the CLI leaves behind.

The first ``hotswap refresh`` runs as a user would start it: no PREFECT_API_URL, so it starts the
home's local Prefect API (flows/local_api.py), a process shared by the home's commands. A second
``refresh`` on the same home must fail at once, naming the first. Then the first is SIGKILLed
mid-run: the local API must not be left behind for good (with no live command it stops after its
idle time), its lease must not block the next command, and no MLflow run stays RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hotswap.components.gallery.lease import GalleryLease, read_lease
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.registry.mlflow_registry import ModelRegistry

from tests.e2e.bad_inputs import copy_home
from tests.e2e.homes import error_lines

HOTSWAP = Path(sys.executable).with_name("hotswap")


def _wait_for(condition, what: str, timeout: float = 300.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _local_api(home: Path) -> list[psutil.Process]:
    """The home's local Prefect API process, as its api.json names it."""
    try:
        pid = json.loads((home / "prefect" / "api.json").read_text())["pid"]
        process = psutil.Process(pid)
    except (OSError, ValueError, KeyError, psutil.NoSuchProcess):
        return []
    return [process] if "hotswap.flows.local_api_server" in " ".join(_cmdline(process)) else []


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


#: the second command: another refresh, and the refresh + backfill pair once seen to hang for 11 minutes
SECOND = {"refresh": ["refresh"], "backfill": ["backfill", "--version", "2", "--mode", "full"]}


@pytest.mark.parametrize("second_command", list(SECOND))
def test_a_second_lifecycle_command_fails_at_once_and_a_killed_cli_leaves_no_orphan(
    second_command: str, cli_homes, tmp_path: Path
) -> None:
    home, config = copy_home(cli_homes["live"], tmp_path / "home"), cli_homes["config"]
    env = {
        **os.environ,
        "HOTSWAP_CONFIG": str(config),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "HOTSWAP_PREFECT_IDLE_SECONDS": "5",  # the local API stops 5 s after its last command
    }
    env.pop("PREFECT_API_URL", None)
    store = LocalObjectStore(home / "store")
    first = subprocess.Popen(
        [str(HOTSWAP), "refresh", "--home", str(home)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        held = _wait_for(lambda: read_lease(store, "default"), "the first refresh's lease", proc=first)[0]
        assert held.pid == first.pid and held.command == "hotswap refresh"

        start = time.monotonic()
        second = subprocess.run(
            [str(HOTSWAP), *SECOND[second_command], "--home", str(home)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 4, second.stdout + second.stderr
        (line,) = error_lines(second.stdout)
        assert f"gallery 'default' is being changed by `hotswap refresh` (pid {first.pid}" in line
        assert "started" in line and "--wait" in line
        assert time.monotonic() - start < 120  # no waiting on the first: only start-up time
        assert first.poll() is None  # the first one proceeds

        servers = _wait_for(lambda: _local_api(home), "the home's local Prefect API", proc=first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()

    gone = _wait_for(
        lambda: not any(s.is_running() and s.status() != "zombie" for s in servers), "orphan", 120
    )
    assert gone, "the local Prefect API outlived the killed CLI beyond its idle time"
    with GalleryLease(store, "default", "hotswap refresh"):  # the dead holder's lease is taken over at once
        pass
    registry = ModelRegistry(f"sqlite:///{home / 'mlflow.db'}", "matrix")
    registry.fail_dead_runs()
    running = registry.client.search_runs([registry.experiment_id], "attributes.status = 'RUNNING'")
    assert not running
