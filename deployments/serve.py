"""Serve every hotswap flow from one long-running process (no work pool or worker needed).

    python deployments/serve.py

The scheduled refresh and the monthly audit run on their crons; promote and backfill are
triggered from the Prefect UI or `prefect deployment run`. Schedules match prefect.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import serve  # noqa: E402

from flows.audit import audit  # noqa: E402
from flows.backfill import backfill  # noqa: E402
from flows.promote import promote  # noqa: E402
from flows.refresh import refresh  # noqa: E402

REFRESH_CRON = "0 3 * * 1"
AUDIT_CRON = "0 5 1 * *"


def main() -> None:
    serve(
        refresh.to_deployment(name="scheduled-refresh", cron=REFRESH_CRON, parameters={"auto_promote": True}),
        promote.to_deployment(name="manual-promote", parameters={"version": "challenger"}),
        backfill.to_deployment(name="backfill", parameters={"mode": "full", "version": "challenger"}),
        audit.to_deployment(name="monthly-audit", cron=AUDIT_CRON),
    )


if __name__ == "__main__":
    main()
