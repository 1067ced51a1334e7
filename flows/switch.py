"""Promotion and the gallery switch as one all-or-nothing unit, crash-consistent.

Before the first step the switch stores an intent record (components/gallery/switch_intent.py). Inside
one Prefect transaction: move the aliases (champion ← version, previous ← old champion), point
the gallery's CURRENT at the version built for it, health-check the live pair, mark the intent
checked. If a step fails, the rollback hooks put the aliases and CURRENT back and the intent
undoes the rest (the target's seal). If the process is killed, the next command that reads live
state rolls the intent back (not yet checked) or forward (checked).

``HOTSWAP_TEST_KILL_AT`` (components/core/faults.py) kills the process at each step boundary in tests.
"""

from __future__ import annotations

from hotswap.components.core.faults import fault_point
from hotswap.components.core.settings import HotswapSettings
from hotswap.tasks.gallery_publish import check_live_gallery, publish_gallery
from hotswap.tasks.registry import promote_model
from hotswap.tasks.switch import complete_switch, confirm_switch, record_switch_intent, undo_switch
from prefect import flow
from prefect.transactions import transaction


@flow(name="switch-live", flow_run_name="switch live to v{version} / gallery {gallery_version}")
def switch_live(settings: HotswapSettings, version: str, gallery_version: str) -> dict[str, str]:
    """Make ``version`` the champion and ``gallery_version`` the live gallery, or neither."""
    intent = record_switch_intent(settings, version, gallery_version)
    fault_point("switch:intent-written")
    try:
        with transaction():
            aliases = promote_model(settings, version)
            fault_point("switch:aliases-moved")
            publish_gallery(settings, gallery_version)
            fault_point("switch:gallery-published")
            check_live_gallery(settings, version, gallery_version)
            confirm_switch(settings, intent)
            fault_point("switch:checked")
    except BaseException:
        undo_switch(settings)
        raise
    complete_switch(settings)
    fault_point("switch:done")
    return {"champion": aliases.get("champion", version), "gallery_version": gallery_version}
