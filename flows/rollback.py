"""rollback: the previous champion and its gallery go live again, through the promotion's own switch.

The same transaction as a promotion (flows/switch.py): aliases move (the rolled-back champion
becomes ``previous``, so a second rollback undoes the first), CURRENT moves, the live pair is
health-checked, and a failure puts everything back. A running query service follows by itself.
"""

from __future__ import annotations

from typing import Any

from hotswap.flows.switch import switch_live
from hotswap.tasks.context import settings_from
from hotswap.tasks.rollback import find_rollback_target
from prefect import flow


@flow(name="rollback", log_prints=True)
def rollback(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Make the previous champion and its gallery live again; returns the new live pair."""
    settings = settings_from(overrides)
    target = find_rollback_target(settings)
    return switch_live(settings, target["version"], target["gallery_version"])
