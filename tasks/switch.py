"""Switch tasks: record the intent before the switch, mark it checked, drop it, or undo by it.

See components/gallery/switch_intent.py for why the intent exists and how a later command uses it.
"""

from __future__ import annotations

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.gallery.switch_intent import (
    SwitchIntent,
    begin_switch,
    finish_switch,
    mark_checked,
    read_intent,
    roll_back,
)
from hotswap.tasks.context import gallery_store, registry
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


@task(
    name="record-switch-intent", task_run_name="record the intent to switch to v{version}", cache_policy=NONE
)
def record_switch_intent(settings: HotswapSettings, version: str, gallery_version: str) -> SwitchIntent:
    return begin_switch(
        registry(settings), gallery_store(settings), settings.gallery_name, version, gallery_version
    )


@task(name="confirm-switch", task_run_name="mark the switch health-checked", cache_policy=NONE)
def confirm_switch(settings: HotswapSettings, intent: SwitchIntent) -> SwitchIntent:
    return mark_checked(gallery_store(settings), intent)


@task(name="finish-switch", task_run_name="drop the switch intent", cache_policy=NONE)
def complete_switch(settings: HotswapSettings) -> None:
    finish_switch(gallery_store(settings), settings.gallery_name)


def undo_switch(settings: HotswapSettings) -> None:
    """After a failed step: make sure the previous pair is back whole (the in-process rollback
    hooks usually did it already) and the target is no longer sealed. A failure here leaves the
    intent for the next command to recover."""
    galleries = gallery_store(settings)
    intent = read_intent(galleries, settings.gallery_name)
    if intent is None:
        return
    try:
        message = roll_back(registry(settings), galleries, intent)
    except Exception as exc:  # the next command that reads live state retries the roll-back
        get_run_logger().warning("could not undo the switch now (%s); the next command will", exc)
        return
    get_run_logger().warning(message)
