"""Serve every hotswap flow from one long-running process (no work pool or worker needed).

    python deployments/serve.py

The refresh runs when `hotswap data register` emits `hotswap.dataset.registered` (and weekly on
its cron as a fallback); the monthly audit on its cron; promote and backfill are started from the
Prefect UI or `prefect deployment run`. Schedules and the trigger match prefect.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hotswap.flows.audit import audit  # noqa: E402
from hotswap.flows.backfill import backfill  # noqa: E402
from hotswap.flows.promote import promote  # noqa: E402
from hotswap.flows.refresh import refresh  # noqa: E402
from prefect import serve  # noqa: E402
from prefect.events import DeploymentEventTrigger  # noqa: E402

REFRESH_CRON = "0 3 * * 1"
AUDIT_CRON = "0 5 1 * *"
NEW_DATA = DeploymentEventTrigger(
    match={"prefect.resource.id": "hotswap.dataset.*"},
    expect={"hotswap.dataset.registered"},
    parameters={
        "dataset_version": "{{ event.payload.dataset_version }}",
        "data_source": "{{ event.payload.data_source }}",
    },
)


def main() -> None:
    serve(
        refresh.to_deployment(
            name="scheduled-refresh",
            cron=REFRESH_CRON,
            parameters={"auto_promote": True},
            triggers=[NEW_DATA],
        ),
        promote.to_deployment(name="manual-promote", parameters={"version": "challenger"}),
        backfill.to_deployment(name="backfill", parameters={"mode": "full", "version": "challenger"}),
        audit.to_deployment(name="monthly-audit", cron=AUDIT_CRON),
    )


if __name__ == "__main__":
    main()
