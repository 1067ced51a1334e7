"""Real hotswap homes for command-line tests, and how to compare one before and after a command."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hotswap.flows.cli import app
from typer.testing import CliRunner

runner = CliRunner()
COMMANDS = {"status", "search", "refresh", "promote", "backfill", "bootstrap", "audit"}


def home_digest(home: Path) -> dict[str, str]:
    """sha256 of every file of the home except logs and Prefect's own database."""
    digest = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home).as_posix()
        if path.is_file() and not relative.startswith(("logs/", "prefect/")):
            digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def invoke(home: Path, config: Path, argv: list[str], env: dict[str, str] | None = None):
    """The CLI in-process (on the session's Prefect test server), ``--home`` added after the command."""
    args = [*argv, "--home", str(home)] if any(a in COMMANDS for a in argv) else argv
    return runner.invoke(app, args, env={"HOTSWAP_CONFIG": str(config), **(env or {})})


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]
