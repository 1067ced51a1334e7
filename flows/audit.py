"""audit: every registered version against every other, written where auditors look."""

from __future__ import annotations

from typing import Any

from hotswap.tasks.context import settings_from
from hotswap.tasks.naming import audit_run_name
from hotswap.tasks.validation import audit_versions
from prefect import flow


@flow(name="audit", log_prints=True, flow_run_name=audit_run_name)
def audit(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lower-triangular compatibility matrix of all versions, AC/AM, as markdown, CSV and HTML."""
    settings = settings_from(overrides)
    return audit_versions(settings)
