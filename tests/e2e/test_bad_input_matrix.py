"""Every bad input in tests/e2e/bad_inputs.py: one ``error:`` line, its exit code, nothing changed.

The CLI runs in-process (typer's CliRunner) against real homes built once per session by the real
``bootstrap`` and ``refresh`` commands, on the session's Prefect test server. A few cases also
run as real subprocesses, as a user would start them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.bad_inputs import BASE_TOML, CASES, Case, cleanup, copy_home
from tests.e2e.homes import error_lines, home_digest, invoke

HOTSWAP = Path(sys.executable).with_name("hotswap")
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "╭─────")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.pending, run=False)] if c.pending else [])
        for c in CASES
    ],
)
def test_bad_input_prints_one_error_line_and_changes_nothing(case: Case, cli_homes, tmp_path: Path) -> None:
    home = cli_homes[case.home] if case.home != "scratch" else copy_home(cli_homes["live"], tmp_path / "h")
    config = cli_homes["config"]
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
    errors = error_lines(result.output)
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


def test_debug_prints_the_traceback_and_the_log_keeps_it(cli_homes) -> None:
    home, config = cli_homes["live"], cli_homes["config"]
    result = invoke(home, config, ["--debug", "promote", "99", "--approve"])
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.output
    assert len(error_lines(result.output)) == 1
    log = (home / "logs" / "hotswap.log").read_text()
    assert "VersionNotFoundError" in log and "Traceback" in log


@pytest.mark.parametrize("case_id", ["config-missing", "gallery-dotdot", "backfill-unknown-version"])
def test_bad_input_as_a_real_subprocess(case_id: str, cli_homes) -> None:
    case = next(c for c in CASES if c.id == case_id)
    home, config = cli_homes["live"], cli_homes["config"]
    before = home_digest(home)
    from prefect.settings import PREFECT_API_URL

    # backfill-unknown-version fails inside a Prefect flow: Prefect's own failure log must stay quiet
    env = {
        **os.environ,
        "HOTSWAP_CONFIG": str(config),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        **case.env,
    }
    result = subprocess.run(
        [str(HOTSWAP), *case.argv, "--home", str(home)], capture_output=True, text=True, env=env, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output
    assert len(error_lines(result.stdout)) == 1, output
    assert case.expect in error_lines(result.stdout)[0]
    assert "Traceback" not in output
    assert home_digest(home) == before


def test_unreachable_prefect_api_is_one_line_naming_it(cli_homes) -> None:
    """Prefect's client cannot run in-process against a stopped API, so this one is a subprocess."""
    from tests.e2e.bad_inputs import _closed_port

    home, config = cli_homes["live"], cli_homes["config"]
    before = home_digest(home)
    url = f"http://127.0.0.1:{_closed_port()}/api"
    env = {**os.environ, "HOTSWAP_CONFIG": str(config), "PREFECT_API_URL": url}
    result = subprocess.run(
        [str(HOTSWAP), "backfill", "--version", "1", "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 5, result.stdout + result.stderr
    (line,) = error_lines(result.stdout)
    assert f"Prefect API {url} did not answer" in line
    assert "Traceback" not in result.stdout + result.stderr
    assert home_digest(home) == before
