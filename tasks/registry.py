"""Registry tasks: resolve aliases, move them (undoably), tag versions."""

from __future__ import annotations

from typing import Any

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.registry.records import CHAMPION, VersionNotFoundError
from hotswap.tasks.context import registry
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.transactions import Transaction, get_transaction

_SNAPSHOT = "alias_snapshot"
_SETTINGS = "settings"


@task(
    name="resolve-alias",
    task_run_name="resolve @{alias}",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NONE,
)
def resolve_alias(settings: HotswapSettings, alias: str = CHAMPION) -> str | None:
    """The version an alias points at, or None when there is none (e.g. no champion yet)."""
    try:
        return registry(settings).resolve(alias).version
    except VersionNotFoundError:
        return None


@task(name="promote-model", task_run_name="promote v{version} to champion", cache_policy=NONE)
def promote_model(settings: HotswapSettings, version: str) -> dict[str, str]:
    """Move ``champion`` to ``version`` (the old one becomes ``previous``); undone on rollback."""
    reg = registry(settings)
    txn = get_transaction()
    if txn is not None:
        txn.set(_SNAPSHOT, reg.aliases())
        txn.set(_SETTINGS, settings.model_dump(mode="json"))
    aliases = reg.promote(version)
    get_run_logger().info("aliases now %s", aliases)
    return aliases


@promote_model.on_rollback
def _restore_aliases(transaction: Transaction) -> None:
    settings = HotswapSettings.model_validate(transaction.get(_SETTINGS))
    registry(settings).restore_aliases(transaction.get(_SNAPSHOT))


@task(name="tag-version", task_run_name="tag v{version}", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def tag_version(settings: HotswapSettings, version: str, tags: dict[str, Any]) -> None:
    registry(settings).set_tags(version, tags)
