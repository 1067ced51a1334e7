"""Validation tasks: the compatibility report that gates promotion, and the audit matrix."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from components.cross_eval import compatibility_matrix
from components.report import CompatibilityReport, CompatThresholds, build_report
from components.settings import HotswapSettings
from tasks.context import dataset, registry
from tasks.reporting import publish_report


def _report_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache on ids only: the registry, both versions, the data and the gate's thresholds."""
    settings: HotswapSettings = parameters["settings"]
    parts = (
        settings.resolved_tracking_uri,
        settings.model_name,
        str(parameters.get("old_version")),
        str(parameters["new_version"]),
        settings.data.model_dump_json(),
        settings.thresholds.model_dump_json(),
    )
    return "compat-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@task(
    name="validate-compatibility",
    task_run_name="validate v{new_version} against v{old_version}",
    cache_key_fn=_report_cache_key,
    result_serializer="json",
)
def validate_compatibility(settings: HotswapSettings, old_version: str, new_version: str) -> dict[str, Any]:
    """Cross-test the challenger against the champion on held-out data; log and return the report."""
    reg = registry(settings)
    data = dataset(settings)
    held_out = data.split(settings.data.validation_split)
    matrix = compatibility_matrix(reg.load_model(old_version), reg.load_model(new_version), held_out)
    report = build_report(
        {pair: m.as_dict() for pair, m in matrix.items()},
        old_version=old_version,
        new_version=new_version,
        data_version=data.version,
        thresholds=CompatThresholds.from_settings(settings.thresholds),
        model_name=settings.model_name,
    )
    reg.log_report(report)
    publish_report(report, settings.model_name)
    logger = get_run_logger()
    logger.info("v%s %s: %s", new_version, "blessed" if report.blessed else "NOT blessed", "; ".join(report.reasons))
    return report.model_dump(mode="json")


@task(name="rubber-stamp", task_run_name="rubber-stamp v{version}", cache_policy=NONE)
def rubber_stamp(settings: HotswapSettings, version: str) -> dict[str, Any]:
    """The first model has nothing to be compatible with: record its self-test and bless it."""
    reg = registry(settings)
    data = dataset(settings)
    model = reg.load_model(version)
    held_out = data.split(settings.data.validation_split)
    classes = settings.data.bootstrap_classes
    if classes is not None:
        held_out = held_out.with_classes(classes)
    matrix = compatibility_matrix(model, model, held_out, pairs=("new/new",))
    report = build_report(
        {pair: m.as_dict() for pair, m in matrix.items()},
        old_version=None,
        new_version=version,
        data_version=data.version,
        thresholds=CompatThresholds.from_settings(settings.thresholds),
        rubber_stamp=True,
        model_name=settings.model_name,
    )
    reg.log_report(report)
    publish_report(report, settings.model_name)
    return report.model_dump(mode="json")


def report_from(payload: dict[str, Any]) -> CompatibilityReport:
    return CompatibilityReport.model_validate(payload)
