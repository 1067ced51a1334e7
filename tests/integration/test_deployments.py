"""deployments/prefect.yaml registers against a real Prefect server (the test harness's API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("prefect")
    result = subprocess.run([str(cli), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.usefixtures("prefect_harness")
def test_deployments_register_with_their_schedules_and_parameters():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "HOTSWAP_PROJECT_DIR": str(ROOT)}
    _prefect("work-pool", "create", "hotswap-process", "--type", "process", env=env)
    _prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env)

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"scheduled-refresh", "manual-promote", "backfill", "monthly-audit"} <= set(deployments)
    refresh = deployments["scheduled-refresh"]
    assert [s.schedule.cron for s in refresh.schedules] == ["0 3 * * 1"]
    assert refresh.parameters == {"auto_promote": True}
    assert refresh.work_pool_name == "hotswap-process"
    assert deployments["manual-promote"].schedules == []
    assert [s.schedule.cron for s in deployments["monthly-audit"].schedules] == ["0 5 1 * *"]
