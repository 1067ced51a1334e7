"""refresh: the whole model-update lifecycle, from the live champion to a decided, staged upgrade
(promoted at once when auto-promotion is on and the decision made it promotable)."""

from __future__ import annotations

from typing import Any

from hotswap.components.lifecycle.gallery_plan import builds_now, gallery_state, goes_live_now
from hotswap.components.lifecycle.refresh_progress import reached
from hotswap.components.registry.records import CHAMPION
from hotswap.flows.switch import switch_live
from hotswap.tasks.adopt import live_gallery_difference, sync_gallery_items
from hotswap.tasks.backfill_decision import decide_backfill, execute_decision, load_decision
from hotswap.tasks.compat_search import search_compatible
from hotswap.tasks.context import settings_from, with_dask
from hotswap.tasks.links import rename_flow_run
from hotswap.tasks.live import check_noop, live_composition, plan_targets, record_noop
from hotswap.tasks.lock import lifecycle_lock
from hotswap.tasks.naming import refresh_name, refresh_run_name
from hotswap.tasks.preflight import check_refresh_inputs
from hotswap.tasks.quantization import train_codebooks
from hotswap.tasks.refresh_progress import record_stage, resume_or_clean_up
from hotswap.tasks.registry import resolve_alias
from hotswap.tasks.training import check_dataset_version, train_challenger
from hotswap.tasks.transforms import train_transforms
from hotswap.tasks.validation import load_report, validate_compatibility
from prefect import flow
from prefect.states import Completed, State


class NoChampionError(RuntimeError):
    """refresh upgrades a live model; without one there is nothing to be compatible with."""


def _data_overrides(overrides: dict[str, Any] | None, data_source: str | None) -> dict[str, Any]:
    merged = dict(overrides or {})
    if data_source:
        merged["data"] = {**merged.get("data", {}), "source": data_source}
    return merged


@flow(name="refresh", log_prints=True, flow_run_name=refresh_run_name)
def refresh(
    overrides: dict[str, Any] | None = None,
    auto_promote: bool | None = None,
    data_source: str | None = None,
    dataset_version: str | None = None,
    prebuild_on_review: bool | None = None,
    dask_address: str | None = None,
) -> State:
    """Train a compatible challenger, validate it, retrain codebooks, decide, and stage the upgrade.

    Nothing is trained when the data, the settings and the champion are unchanged since the
    champion (or another challenger against it) was trained: the run returns ``noop`` and why,
    and records it in MLflow. Otherwise the live gallery's composition chooses the compatibility
    targets and the as-served validation gallery.

    With ``auto_promote`` (default: the ``auto_promote`` setting) a challenger whose decision is
    promotable (DESIGN.md §16: a full backfill that beats live, or a blessed option that beats
    live) gets its gallery built and goes live at once. Otherwise it waits for the ``promote``
    flow, and its gallery is planned, built on approval, unless ``prebuild_on_review`` (default:
    the setting) builds it now (components/lifecycle/gallery_plan.py). ``data_source`` /
    ``dataset_version`` come from a ``hotswap.dataset.registered`` event: the run trains on that
    data and refuses to start when the source no longer holds that version. One lifecycle run per
    gallery at a time.

    Each stage is recorded on the challenger (tasks/refresh_progress.py). A refresh that was
    interrupted (killed, or stopped by an outage) is resumed after its last recorded stage when
    its inputs are unchanged; otherwise its staged gallery is deleted, and the run says so.

    ``dask_address`` (default: the ``dask.address`` setting) runs the backfill's shards on that
    Dask cluster; the decision's cost sample runs here.
    """
    settings = settings_from(with_dask(_data_overrides(overrides, data_source), dask_address))
    auto_promote = settings.auto_promote if auto_promote is None else auto_promote
    prebuild = settings.prebuild_on_review if prebuild_on_review is None else prebuild_on_review
    with lifecycle_lock(settings, "refresh"):
        champion = resolve_alias(settings, CHAMPION)
        if champion is None:
            raise NoChampionError(
                f"model {settings.model_name!r} has no champion: run `hotswap bootstrap` first"
            )
        data_version = check_dataset_version(settings, dataset_version)
        synced = _sync_gallery_first(settings)
        reason = check_noop(settings, champion)
        if reason is not None:
            record_noop(settings, champion, reason)
            summary = {
                "champion": champion,
                "noop": True,
                "reason": reason,
                "promoted": False,
                "gallery_sync": synced,
            }
            return Completed(name="Unchanged", message=f"nothing to do: {reason}", data=summary)

        resume = resume_or_clean_up(settings, champion)
        challenger, report, decision, targets = _upgrade(settings, champion, resume, data_version)
        mode, promotable = decision["mode"], decision["promotable"]
        gallery_version = None
        if builds_now(mode, promotable, auto_promote, prebuild):
            gallery_version = execute_decision(settings, challenger, decision)
        record_stage(settings, challenger, "staged")

        summary: dict[str, Any] = {
            "champion": champion,
            "noop": False,
            "challenger": challenger,
            "targets": targets,
            "blessed": report["blessed"],
            "decision": mode,
            "promotable": promotable,
            "promotable_reason": decision["promotable_reason"],
            "gallery": gallery_state(mode, gallery_version),
            "gallery_version": gallery_version,
            "promoted": False,
            "dataset_version": data_version,
            "recovery": resume["actions"],
            "gallery_sync": synced,
        }
        if goes_live_now(mode, promotable, auto_promote) and gallery_version is not None:
            switch_live(settings, challenger, gallery_version)
            summary["promoted"] = True
    return _outcome(summary, champion, resume["actions"])


def _outcome(summary: dict[str, Any], champion: str, recovery: list[str]) -> State:
    """The run's final state: promoted, rejected, or staged for review (with where its gallery is)."""
    challenger, mode = summary["challenger"], summary["decision"]
    verdict = "blessed" if summary["blessed"] else "NOT blessed"
    if summary["promoted"]:
        name, next_step = "Promoted", f"v{challenger} is live on gallery {summary['gallery_version']}"
    elif mode == "reject":
        name, next_step = "Rejected", f"v{champion} stays live"
    else:
        promotable = (
            "promotable" if summary["promotable"] else f"not promotable ({summary['promotable_reason']})"
        )
        name = "Staged"
        next_step = (
            f"{promotable}; gallery {summary['gallery']}; run the promote deployment to review v{challenger}"
        )
    message = f"v{challenger} {verdict} against v{champion}; decision {mode}; {next_step}"
    if recovery:
        message += " (" + "; ".join(recovery) + ")"
    return Completed(name=name, message=message, data=summary)


Upgrade = tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]] | None]


def _sync_gallery_first(settings: Any) -> dict[str, Any] | None:
    """With ``gallery.sync_on_refresh``: items the gallery manifest gained are embedded by the
    champion and items it lost are dropped, before anything is decided (as `hotswap gallery-sync`)."""
    if not settings.gallery.sync_on_refresh:
        return None
    difference = live_gallery_difference(settings)
    if not difference["added"] and not difference["removed"]:
        return None
    return sync_gallery_items(settings, publish=True)


def _upgrade(settings: Any, champion: str, resume: dict[str, Any], data_version: str) -> Upgrade:
    """Train (or resume) the challenger, gate it as served, retrain codebooks, decide.

    ``resume`` (tasks/refresh_progress.py) names an interrupted refresh of the same inputs and
    the last stage it recorded: the stages it finished are read back instead of redone.
    """
    challenger, stage = resume["version"], resume["stage"]
    check_refresh_inputs(settings, champion)
    composition = live_composition(settings)
    targets = plan_targets(settings, champion, composition)
    if challenger is None:
        challenger = train_challenger(settings, champion, targets)
        record_stage(settings, challenger, "trained")
    rename_flow_run(refresh_name(challenger, champion, data_version))
    if reached(stage, "validated"):
        report = load_report(settings, challenger).model_dump(mode="json")  # never re-judged
    else:
        report = validate_compatibility(settings, champion, challenger, composition, targets)
        search = settings.compat_search
        searchable = search.enabled and search.max_trials > 0 and not resume["searched"]
        if not report["blessed"] and searchable:
            challenger, report = search_compatible(
                settings, champion, challenger, report, composition, targets
            )
            rename_flow_run(refresh_name(challenger, champion, data_version))
        record_stage(settings, challenger, "validated")
    if not reached(stage, "quantized"):
        train_codebooks(settings, challenger)
        record_stage(settings, challenger, "quantized")
    if not reached(stage, "decided"):  # the transform option's maps h_v (none when disabled)
        train_transforms(settings, champion, challenger, composition)
    if reached(stage, "decided"):
        decision = load_decision(settings, challenger).model_dump(mode="json")
    else:
        decision = decide_backfill(settings, champion, challenger, report, composition)
        record_stage(settings, challenger, "decided")
    return challenger, report, decision, targets
