"""Every bad input in tests/e2e/bad_inputs.py: one ``error:`` line, its exit code, nothing changed.

The CLI runs in-process (typer's CliRunner) against real homes built once per session by the real
``bootstrap`` and ``refresh`` commands, on the session's Prefect test server. A few cases also
run as real subprocesses, as a user would start them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.e2e.bad_inputs import BASE_TOML, CASES, Case, cleanup, copy_home

runner = CliRunner()
HOTSWAP = Path(sys.executable).with_name("hotswap")
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "╭─────")


def home_digest(home: Path) -> dict[str, str]:
    """sha256 of every file of the home except logs and Prefect's own database."""
    digest = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home).as_posix()
        if path.is_file() and not relative.startswith(("logs/", "prefect/")):
            digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def invoke(home: Path, config: Path, argv: list[str], env: dict[str, str] | None = None):
    return runner.invoke(
        app,
        [*argv, "--home", str(home)] if _takes_home(argv) else argv,
        env={"HOTSWAP_CONFIG": str(config), **(env or {})},
    )


def _takes_home(argv: list[str]) -> bool:
    commands = {"status", "search", "refresh", "promote", "backfill", "bootstrap", "audit"}
    return any(a in commands for a in argv)


@pytest.fixture(scope="session")
def matrix_homes(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> Iterator[dict[str, Path]]:
    """``live``: v1 champion + decided v2 challenger; ``empty``: an initialised empty registry."""
    root = tmp_path_factory.mktemp("matrix")
    config = root / "hotswap.toml"
    config.write_text(BASE_TOML)
    live, empty = root / "live", root / "empty"
    for argv in (["bootstrap"], ["refresh"]):
        result = invoke(live, config, argv)
        assert result.exit_code == 0, result.output
    assert invoke(empty, config, ["status"]).exit_code == 0
    yield {"live": live, "empty": empty, "config": config, "root": root}


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.pending, run=False)] if c.pending else [])
        for c in CASES
    ],
)
def test_bad_input_prints_one_error_line_and_changes_nothing(
    case: Case, matrix_homes, tmp_path: Path
) -> None:
    home = (
        matrix_homes[case.home] if case.home != "scratch" else copy_home(matrix_homes["live"], tmp_path / "h")
    )
    config = matrix_homes["config"]
    if case.toml:
        config = tmp_path / "hotswap.toml"
        config.write_text(BASE_TOML + "\n" + case.toml)
    env = dict(case.env)
    if case.setup is not None:
        env.update(case.setup(home, tmp_path))
    argv = [a.replace("{QUERY}", env.pop("QUERY", "")) if "{QUERY}" in a else a for a in case.argv]
    before = home_digest(home)
    try:
        result = invoke(home, config, argv, env)
        after = home_digest(home)
    finally:
        cleanup(case, home)
    errors = _error_lines(result.output)
    assert len(errors) == 1, result.output
    assert case.expect in errors[0], errors[0]
    assert result.exit_code == case.code, result.output
    assert not any(marker in result.output for marker in TRACEBACK_MARKERS), result.output
    assert "s3cr3t" not in result.output
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed by a failed command: {changed}"


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_debug_prints_the_traceback_and_the_log_keeps_it(matrix_homes) -> None:
    home, config = matrix_homes["live"], matrix_homes["config"]
    result = invoke(home, config, ["--debug", "promote", "99", "--approve"])
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.output
    assert len(_error_lines(result.output)) == 1
    log = (home / "logs" / "hotswap.log").read_text()
    assert "VersionNotFoundError" in log and "Traceback" in log


@pytest.mark.parametrize("case_id", ["config-missing", "gallery-dotdot"])
def test_bad_input_as_a_real_subprocess(case_id: str, matrix_homes) -> None:
    case = next(c for c in CASES if c.id == case_id)
    home, config = matrix_homes["live"], matrix_homes["config"]
    before = home_digest(home)
    env = {**os.environ, "HOTSWAP_CONFIG": str(config), **case.env}
    result = subprocess.run(
        [str(HOTSWAP), *case.argv, "--home", str(home)], capture_output=True, text=True, env=env, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output
    assert len(_error_lines(result.stdout)) == 1, output
    assert case.expect in _error_lines(result.stdout)[0]
    assert "Traceback" not in output
    assert home_digest(home) == before
