"""Validation tasks: the compatibility report that gates promotion, and the audit matrix."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hotswap.components.compat.gate import build_report
from hotswap.components.compat.report import CompatibilityReport, CompatThresholds
from hotswap.components.compat.served import ServedQuality, served_evaluation
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.classes import load_class_map
from hotswap.components.lifecycle.first_model import FirstModelError, check_first_model
from hotswap.components.lifecycle.live import LiveComposition, TargetWeight
from hotswap.tasks.context import dataset, loader_config, registry
from hotswap.tasks.links import links_markdown, prefect_run_tags
from hotswap.tasks.quantization import load_codebooks
from hotswap.tasks.reporting import publish_markdown, publish_report, publish_table
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


def _report_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache on ids only: the registry, both versions, the data and the gate's thresholds."""
    settings: HotswapSettings = parameters["settings"]
    composition = parameters.get("composition") or {}
    parts = (
        settings.resolved_tracking_uri,
        settings.model_name,
        str(parameters.get("old_version")),
        str(parameters["new_version"]),
        settings.data.model_dump_json(),
        settings.thresholds.model_dump_json(),
        str(composition.get("gallery_version")),
        json.dumps(composition.get("counts"), sort_keys=True),
    )
    return "compat-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _record_report(
    settings: HotswapSettings,
    matrix: dict[str, Any],
    old_version: str | None,
    new_version: str,
    data_version: str,
    rubber_stamp: bool = False,
    served: ServedQuality | None = None,
) -> CompatibilityReport:
    """Apply the gate to a matrix, log the report to MLflow and publish it as Prefect artifacts."""
    report = build_report(
        {pair: m.as_dict() for pair, m in matrix.items()},
        old_version=old_version,
        new_version=new_version,
        data_version=data_version,
        thresholds=CompatThresholds.from_settings(settings.thresholds),
        rubber_stamp=rubber_stamp,
        model_name=settings.model_name,
        served=served,
    )
    registry(settings).log_report(report, run_tags=prefect_run_tags())
    publish_report(report, settings.model_name, links=links_markdown(settings, new_version))
    return report


@task(
    name="validate-compatibility",
    task_run_name="validate v{new_version} against v{old_version}",
    cache_key_fn=_report_cache_key,
    result_serializer="json",
)
def validate_compatibility(
    settings: HotswapSettings,
    old_version: str,
    new_version: str,
    composition: dict[str, Any] | None = None,
    targets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Judge the challenger on the gate split; log and return the report.

    With the live gallery's ``composition`` (what a refresh passes) the gate is as served: the
    challenger's and the champion's queries against the gate split composed like the live gallery
    and encoded with the live codebooks (components/compat/served.py); the pairwise matrix stays in the
    report for audit. Without it, the pairwise cross-test gates (the single-old-model rule).
    """
    from hotswap.components.compat.cross_eval import compatibility_matrix_from_features
    from hotswap.components.models.training import extract_features

    reg = registry(settings)
    data = dataset(settings)
    held_out = data.split(settings.data.gate_split)
    champion, candidate = reg.load_model(old_version), reg.load_model(new_version)
    feats = {
        role: extract_features(model, held_out, device=settings.torch_device, loader=loader_config(settings))
        for role, model in (("old", champion), ("new", candidate))
    }
    matrix = compatibility_matrix_from_features(feats, held_out.labels)
    served = None
    if composition is not None:
        live = LiveComposition.model_validate(composition)
        others = {v: reg.load_model(v) for v in live.counts if v not in (str(old_version), str(new_version))}
        served = served_evaluation(
            candidate=candidate,
            champion=champion,
            gallery_models=others,
            data=held_out,
            composition=live,
            codebooks=load_codebooks(settings, live.codebook_version) if live.codebook_version else None,
            candidate_version=new_version,
            champion_version=old_version,
            seed=settings.seed,
            targets=[TargetWeight.model_validate(t) for t in targets or []],
            calibration_config=settings.decision.calibration,
            device=settings.torch_device,
            features={str(old_version): feats["old"], str(new_version): feats["new"]},
        )
    report = _record_report(settings, matrix, old_version, new_version, data.version, served=served)
    logger = get_run_logger()
    logger.info(
        "v%s %s: %s", new_version, "blessed" if report.blessed else "NOT blessed", "; ".join(report.reasons)
    )
    return report.model_dump(mode="json")


TAG_FIRST_MODEL = "hotswap.first_model"


@task(name="rubber-stamp", task_run_name="rubber-stamp v{version}", cache_policy=NONE)
def rubber_stamp(settings: HotswapSettings, version: str, force: bool = False) -> dict[str, Any]:
    """The first model has nothing to be compatible with: record its self-test and bless it.

    The self-test is the model's own retrieval on the validation split of the classes it knows
    (its recorded class map), whether hotswap trained it or a team brought it (adopt). A self-test
    that does not clearly beat chance is refused (components/lifecycle/first_model.py): the
    version is tagged ``hotswap.first_model=refused`` and never goes live, unless ``force``.
    """
    from hotswap.components.compat.cross_eval import compatibility_matrix_from_features
    from hotswap.components.models.training import extract_features

    reg = registry(settings)
    data = dataset(settings)
    model = reg.load_model(version)
    classes = load_class_map(reg, version, model.spec.num_classes, getattr(model.spec, "class_names", ()))
    held_out = data.split(settings.data.validation_split).with_class_names(classes)
    feats = extract_features(model, held_out, device=settings.torch_device, loader=loader_config(settings))
    matrix = compatibility_matrix_from_features({"new": feats}, held_out.labels, pairs=("new/new",))
    try:
        check_first_model(matrix["new/new"].top1, held_out.labels, version, settings.data.validation_split)
    except FirstModelError:
        if not force:
            reg.set_tags(version, {TAG_FIRST_MODEL: "refused"})
            raise
        reg.set_tags(version, {TAG_FIRST_MODEL: "forced"})
        get_run_logger().warning("v%s does not clearly beat chance; blessed anyway (--force)", version)
    report = _record_report(settings, matrix, None, version, data.version, rubber_stamp=True)
    return report.model_dump(mode="json")


@task(name="load-report", task_run_name="load the report of v{version}", retries=2, cache_policy=NONE)
def load_report(settings: HotswapSettings, version: str) -> CompatibilityReport:
    """The report as logged at validation time: read back, never recomputed."""
    return registry(settings).load_report(version)


@task(name="audit-versions", task_run_name="audit all versions", cache_policy=NONE)
def audit_versions(settings: HotswapSettings) -> dict[str, Any]:
    """C[i][j] for every registered version pair on held-out data; AC/AM; markdown, CSV, HTML."""
    from hotswap.components.compat.audit import audit_models

    reg = registry(settings)
    versions = [info.version for info in reg.list_versions()]
    held_out = dataset(settings).split(settings.data.validation_split)
    result = audit_models({v: reg.load_model(v) for v in versions}, held_out, device=settings.torch_device)
    table = result.long_table()
    markdown = result.to_markdown()
    files = {
        "audit.md": markdown.encode(),
        "audit.csv": table.to_csv(index=False).encode(),
        "audit.html": table.to_html(index=False, float_format="{:.4f}".format).encode(),
    }
    metrics = {
        f"{name}.{row.metric}": value
        for _, row in result.summary().iterrows()
        for name, value in (("ac", row.AC), ("am", row.AM))
        if value == value
    }
    run_id = reg.log_record_run(
        "audit", "audit", files, metrics=metrics, tags=prefect_run_tags(), directory="audit"
    )
    publish_table(
        f"audit-{settings.model_name}",
        table.round(4).to_dict(orient="records"),
        f"Compatibility audit of {len(versions)} versions (query version vs gallery version)",
    )
    publish_markdown(f"audit-report-{settings.model_name}", markdown, "Compatibility audit")
    return {
        "versions": versions,
        "run_id": run_id,
        "ac": {m: result.ac(m) for m in ("map", "top1", "top5")},
        "am": {m: result.am(m) for m in ("map", "top1", "top5")},
        "markdown": markdown,
    }
