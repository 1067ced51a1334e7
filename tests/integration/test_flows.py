"""The lifecycle on the real Prefect engine, real SQLite MLflow, real moto S3 and real training.

One module-scoped lifecycle (bootstrap → refresh) is shared by the tests below, which then
exercise the manual promotion (rejected, rolled back, approved) and the audit in that order.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.decision.storage import load_decision
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.tasks.context import gallery_store
from hotswap.tasks.transforms import load_transforms
from prefect import task

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def lifecycle(prefect_harness, lifecycle_overrides: dict[str, Any]) -> dict[str, Any]:
    from hotswap.flows.bootstrap import bootstrap
    from hotswap.flows.refresh import refresh

    first = bootstrap(overrides=lifecycle_overrides)
    second = refresh(overrides=lifecycle_overrides, auto_promote=False)
    return {"first": first, "second": second, "settings": HotswapSettings(**lifecycle_overrides)}


def _registry(settings: HotswapSettings) -> ModelRegistry:
    return ModelRegistry.from_settings(settings)


def test_bootstrap_then_refresh_stages_a_decided_challenger(lifecycle):
    settings, first, second = lifecycle["settings"], lifecycle["first"], lifecycle["second"]
    registry = _registry(settings)
    # bootstrap: v1 is champion, rubber-stamped, and its gallery is live on S3
    assert first["version"] == "1" and first["blessed"] is True
    assert registry.load_report("1").rubber_stamp is True
    galleries = gallery_store(settings)
    assert galleries.read_current(settings.gallery_name) == first["gallery_version"]
    # refresh without auto-promotion: v2 is the challenger, nothing live has moved
    assert second["challenger"] == "2" and second["promoted"] is False
    assert registry.aliases() == {"champion": "1", "challenger": "2"}
    assert galleries.read_current(settings.gallery_name) == first["gallery_version"]
    # the report and the decision were recorded with the version, and the decision was staged
    report = registry.load_report("2")
    assert report.old_version == "1" and report.blessed == second["blessed"]
    tags = registry.get_tags("2")
    assert tags["backfill.decision"] == second["decision"]
    assert tags["compat.blessed"] == str(second["blessed"]).lower()
    # the refresh trained the transform option's map v1 → v2 and the decision weighed it
    assert set(load_transforms(settings, "2", ["1"])) == {"1"}
    assert "transform" in {o.mode for o in load_decision(registry, "2").options}
    if not second["blessed"]:
        assert second["decision"] in ("full", "reject")
    # the decision waits for a reviewer, so its gallery is planned, built on approval: none written yet
    from hotswap.components.lifecycle.refresh_progress import staged_gallery_versions
    from hotswap.components.lifecycle.status import system_status

    assert second["decision"] != "reject", second  # the module's promotion tests need a decided upgrade
    decision = load_decision(registry, "2")
    assert second["gallery_version"] is None and decision.gallery_version is None
    assert second["gallery"] == decision.gallery_state == "planned, built on approval"
    assert (second["promotable"], second["promotable_reason"]) == (
        decision.promotable,
        decision.promotable_reason,
    )
    written = galleries.list_versions(settings.gallery_name, include_staged=True)
    assert staged_gallery_versions("2", written) == [] and tags["hotswap.refresh.stage"] == "staged"
    status = system_status(settings)["last_decision"]
    assert status["gallery"] == "planned, built on approval" and status["mode"] == second["decision"]


@task(name="check-live-gallery")
def _failing_health_check(settings, version, gallery_version):
    raise RuntimeError("injected failure after the alias move and the gallery switch")


def test_a_failure_after_the_switch_rolls_back_aliases_and_gallery(lifecycle, monkeypatch):
    import hotswap.flows.switch as switch_module

    settings, second = lifecycle["settings"], lifecycle["second"]
    registry, galleries = _registry(settings), gallery_store(settings)
    live_before = galleries.read_current(settings.gallery_name)
    aliases_before = registry.aliases()
    monkeypatch.setattr(switch_module, "check_live_gallery", _failing_health_check)
    # a version staged for v2 by hand (the decided one is built only on approval, tested below)
    from hotswap.tasks.gallery_build import _backfill

    items = galleries.load_manifest(settings.gallery_name, live_before).num_items
    target = _backfill(settings, "2", live_before, "partial", 0.25, settings.decision, "1", items)
    with pytest.raises(RuntimeError, match="injected failure"):
        switch_module.switch_live(settings, second["challenger"], target)
    assert registry.aliases() == aliases_before
    assert galleries.read_current(settings.gallery_name) == live_before
    assert target != live_before  # the failed switch must not leave its target sealed as published
    assert not galleries.is_sealed(settings.gallery_name, target)
    from hotswap.components.gallery.switch_intent import read_intent

    assert read_intent(galleries, settings.gallery_name) is None


def _run_paused_promotion(overrides: dict[str, Any], run_input: dict[str, Any]) -> dict[str, Any]:
    """Start `promote` in a thread, wait until it is Paused, answer its form, collect its result."""
    from hotswap.flows.promote import promote
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
    from prefect.flow_runs import resume_flow_run

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = promote(overrides=overrides, poll_interval_seconds=1)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    paused = None
    deadline = time.monotonic() + 300  # a readiness wait for the thread, not a performance limit
    with get_client(sync_client=True) as client:
        while paused is None and time.monotonic() < deadline and thread.is_alive():
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                )
            )
            paused = next((r for r in runs if r.name and r.state and r.state.is_paused()), None)
            time.sleep(0.5)
    assert paused is not None, f"promote never paused: {outcome}"
    resume_flow_run(paused.id, run_input=run_input)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    outcome["result"]["_flow_run_id"] = paused.id  # the caller inspects the run's final state
    return outcome["result"]


def test_promotion_rejected_through_the_form_changes_nothing(lifecycle, lifecycle_overrides):
    settings = lifecycle["settings"]
    registry, galleries = _registry(settings), gallery_store(settings)
    live_before = galleries.read_current(settings.gallery_name)
    result = _run_paused_promotion(lifecycle_overrides, {"approve": False, "reason": "not this week"})
    flow_run_id = result.pop("_flow_run_id")
    assert result == {"version": "2", "promoted": False, "reason": "not this week"}
    # the run's final state says it was rejected, and why (not a plain "Completed")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_completed() and state.name == "Rejected"
    assert state.message == "v2 rejected by the reviewer: not this week"
    assert registry.aliases()["champion"] == "1"
    assert galleries.read_current(settings.gallery_name) == live_before
    assert registry.get_tags("2")["promotion.status"] == "rejected"


def test_promotion_approved_through_the_form_builds_the_planned_gallery_and_switches(
    lifecycle, lifecycle_overrides
):
    settings, second = lifecycle["settings"], lifecycle["second"]
    registry, galleries = _registry(settings), gallery_store(settings)
    # given a decision awaiting review: its full gallery was planned, not built
    assert "v2-full" not in galleries.list_versions(settings.gallery_name, include_staged=True)
    # when the reviewer approves a full backfill
    result = _run_paused_promotion(
        lifecycle_overrides, {"approve": True, "reason": "report reviewed", "backfill_mode": "full"}
    )
    result.pop("_flow_run_id")
    # then promote built it and published it with the model
    assert result["promoted"] is True
    assert registry.aliases() == {"champion": "2", "previous": "1"}
    live = galleries.read_current(settings.gallery_name)
    assert (
        live == result["gallery_version"] == registry.get_tags("2")["backfill.gallery_version"] == "v2-full"
    )
    manifest = galleries.load_manifest(settings.gallery_name, live)
    assert manifest.model_version == "2" and manifest.metadata["backfill"]["mode"] == "full"
    # the live pair answers a query
    from hotswap.components.lifecycle.search import search_live

    hits = search_live(settings, item_id=str(galleries.load_arrays(settings.gallery_name, live).ids[0]), k=3)
    assert hits.model_version == "2" and len(hits.results) == 3
    assert second["challenger"] == "2"


def test_a_decision_made_against_a_gallery_that_is_no_longer_live_is_refused(lifecycle, lifecycle_overrides):
    from hotswap.flows.promote import PromotionInput, promote
    from hotswap.tasks.backfill_decision import StaleDecisionError

    settings = lifecycle["settings"]
    registry, galleries = _registry(settings), gallery_store(settings)
    live, aliases = galleries.read_current(settings.gallery_name), registry.aliases()
    # v2's decision was made against the bootstrap gallery; the approved promotion made v2-full live
    with pytest.raises(StaleDecisionError, match="is live now"):
        promote(overrides=lifecycle_overrides, version="2", answer=PromotionInput(approve=True))
    assert galleries.read_current(settings.gallery_name) == live and registry.aliases() == aliases


def test_audit_reports_every_version_pair(lifecycle, lifecycle_overrides):
    from hotswap.flows.audit import audit

    settings = lifecycle["settings"]
    result = audit(overrides=lifecycle_overrides)
    assert result["versions"] == ["1", "2"]
    assert 0.0 <= result["ac"]["top1"] <= 1.0 and result["am"]["map"] > 0.1
    files = {
        name: _registry(settings).run_artifact_bytes(result["run_id"], f"audit/{name}")
        for name in ("audit.md", "audit.csv", "audit.html")
    }
    assert b"query v2" in files["audit.md"]
    assert files["audit.csv"].decode().splitlines()[0].startswith("query,gallery,map")
    assert b"<table" in files["audit.html"]


def test_standalone_backfill_runs_its_shards_on_a_dask_cluster(lifecycle, lifecycle_overrides):
    from distributed import LocalCluster
    from hotswap.components.gallery.provenance import feature_models
    from hotswap.flows.backfill import backfill

    settings = lifecycle["settings"]
    galleries = gallery_store(settings)
    live_before = galleries.read_current(settings.gallery_name)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = backfill(
            overrides=lifecycle_overrides,
            mode="requantize",
            version="2",
            dask_address=cluster.scheduler_address,
        )
    assert result["gallery_version"] == "v2-requantize" and result["published"] is False
    manifest = galleries.load_manifest(settings.gallery_name, "v2-requantize")
    assert manifest.metadata["backfill"]["mode"] == "requantize"
    assert manifest.num_items == galleries.load_manifest(settings.gallery_name, live_before).num_items
    # requantize re-encodes stored features: provenance is the live version's, not a new forward pass
    before = feature_models(galleries, settings.gallery_name, live_before)
    after = feature_models(galleries, settings.gallery_name, "v2-requantize")
    assert (before == after).all()
    assert galleries.read_current(settings.gallery_name) == live_before


def test_a_mixed_gallery_goes_live_with_a_calibration_for_its_champion(lifecycle):
    """A partial version for v2 gets v2's calibration when staged; the switch checks it; search uses it."""
    from hotswap.components.gallery.calibration import list_calibrations
    from hotswap.components.lifecycle.search import search_live
    from hotswap.flows.switch import switch_live
    from hotswap.tasks.gallery_build import _backfill, ensure_served_calibration

    settings = lifecycle["settings"]
    galleries = gallery_store(settings)
    first = lifecycle["first"]["gallery_version"]
    items = galleries.load_manifest(settings.gallery_name, first).num_items
    target = _backfill(settings, "2", first, "partial", 0.5, settings.decision, "1", items)
    assert ensure_served_calibration(settings, target, "2") in ("fitted", "stored")
    assert list_calibrations(galleries, settings.gallery_name, target) == ["2"]
    assert switch_live(settings, "2", target)["gallery_version"] == target
    hits = search_live(
        settings, item_id=str(galleries.load_arrays(settings.gallery_name, target).ids[0]), k=3
    )
    assert hits.gallery_version == target and hits.calibration == "stored" and len(hits.results) == 3
