"""Flow-run names that say what a run does: "refresh v3 against v2 (data 1a2b3c)".

Prefect calls these when a run starts (``flow_run_name=``), with the run's parameters in
``prefect.runtime.flow_run.parameters``. They look versions up in the registry, read-only
(components/registry/sqlite_reader.py: MLflow is not imported before the run has started); when
that is not possible (no champion yet, registry unreachable) the name falls back to the
parameters alone, because a name must never fail a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.registry.records import CHAMPION
from hotswap.components.registry.sqlite_reader import registry_for_reading
from hotswap.tasks.context import dataset_version
from prefect.runtime import flow_run

logger = logging.getLogger(__name__)
DATA_VERSION_CHARS = 6


def short_data_version(version: str | None) -> str:
    return (version or "?")[:DATA_VERSION_CHARS]


def _settings() -> HotswapSettings:
    overrides = flow_run.get_parameters().get("overrides") or {}
    data_source = flow_run.get_parameters().get("data_source")
    if data_source:
        overrides = {**overrides, "data": {**overrides.get("data", {}), "source": data_source}}
    return HotswapSettings(**overrides)


def _versions(settings: HotswapSettings) -> tuple[str | None, int]:
    """The champion (or None) and the number the next registered version will get."""
    reg = registry_for_reading(settings)
    champion = reg.aliases().get(CHAMPION)
    known = [int(v.version) for v in reg.list_versions()]
    return champion, (max(known) + 1 if known else 1)


def _safely(build: Callable[[], str], fallback: str) -> str:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a name is cosmetic
        logger.debug("flow-run name fell back to %r: %s", fallback, exc)
        return fallback


def refresh_name(challenger: str | int, champion: str | None, data_version: str | None) -> str:
    return f"refresh v{challenger} against v{champion or '?'} (data {short_data_version(data_version)})"


def refresh_run_name() -> str:
    def build() -> str:
        settings = _settings()
        champion, next_version = _versions(settings)
        data_version = flow_run.get_parameters().get("dataset_version") or dataset_version(settings)
        return refresh_name(next_version, champion, data_version)

    return _safely(build, "refresh")


def bootstrap_run_name() -> str:
    def build() -> str:
        settings = _settings()
        _, next_version = _versions(settings)
        data = short_data_version(dataset_version(settings))
        return f"bootstrap v{next_version} of {settings.model_name} (data {data})"

    return _safely(build, "bootstrap")


def _resolved(settings: HotswapSettings, version: str) -> str:
    return version if version.isdigit() else registry_for_reading(settings).resolve(version).version


def promote_run_name() -> str:
    params: dict[str, Any] = flow_run.get_parameters()
    version = str(params.get("version") or "challenger")

    def build() -> str:
        settings = _settings()
        champion = registry_for_reading(settings).aliases().get(CHAMPION)
        return f"promote v{_resolved(settings, version)} over v{champion or '?'}"

    return _safely(build, f"promote {version}")


def backfill_run_name() -> str:
    params: dict[str, Any] = flow_run.get_parameters()
    mode, version = params.get("mode") or "full", str(params.get("version") or "challenger")
    fraction = params.get("fraction")
    what = f"{mode} backfill" + (f" ({fraction:.0%})" if mode == "partial" and fraction else "")

    def build() -> str:
        settings = _settings()
        return f"{what} for v{_resolved(settings, version)} of gallery {settings.gallery_name}"

    return _safely(build, f"{what} for {version}")


def audit_run_name() -> str:
    def build() -> str:
        settings = _settings()
        versions = registry_for_reading(settings).list_versions()
        return f"audit of {len(versions)} versions of {settings.model_name}"

    return _safely(build, "audit")
