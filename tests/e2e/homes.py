"""Real hotswap homes for command-line tests, and how to compare one before and after a command."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from hotswap.flows.cli import app
from typer.testing import CliRunner

runner = CliRunner()
COMMANDS = {"status", "search", "refresh", "promote", "backfill", "bootstrap", "audit"}


def home_digest(home: Path) -> dict[str, str]:
    """sha256 of every file of the home except logs, Prefect's own database and ``cache/`` (answers
    kept to be given again, e.g. the status snapshot: not stored state)."""
    digest = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home).as_posix()
        if path.is_file() and not relative.startswith(("logs/", "prefect/", "cache/")):
            digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def invoke(home: Path, config: Path, argv: list[str], env: dict[str, str] | None = None):
    """The CLI in-process (on the session's Prefect test server), ``--home`` added after the command."""
    args = [*argv, "--home", str(home)] if any(a in COMMANDS for a in argv) else argv
    return runner.invoke(app, args, env={"HOTSWAP_CONFIG": str(config), **(env or {})})


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


class PausedCommand:
    """A real ``hotswap`` process that pauses at a named step (components/core/faults.py) until released.

    The test waits for the step, injects its fault (stops a server, fills a disk), then releases
    the process so that it runs into the fault exactly there.
    """

    def __init__(self, argv: list[str], home: Path, config: Path, step: str, folder: Path, env: dict) -> None:
        from prefect.settings import PREFECT_API_URL

        folder.mkdir(parents=True, exist_ok=True)
        self.step, self.folder = step, folder
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("hotswap")), *argv, "--home", str(home)],
            env={
                **os.environ,
                **env,
                "HOTSWAP_CONFIG": str(config),
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "HOTSWAP_TEST_PAUSE_AT": step,
                "HOTSWAP_TEST_PAUSE_DIR": str(folder),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_until_paused(self, timeout: float = 300.0) -> None:
        reached, deadline = self.folder / f"{self.step}.reached", time.monotonic() + timeout
        while not reached.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"exited ({self.proc.returncode}) before {self.step}:\n{out}{err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {self.step}")
            time.sleep(0.05)

    def release(self, timeout: float = 300.0) -> tuple[int, str, str]:
        """Let it go on; returns (exit code, stdout, stderr) once it ended."""
        (self.folder / f"{self.step}.go").touch()
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err
