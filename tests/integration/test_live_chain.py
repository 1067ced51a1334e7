"""Refreshes over a live, mixed gallery, on the real Prefect engine, SQLite MLflow and real training.

One module-scoped chain, small synthetic data (16×16, 8 classes) so every step trains for real
in seconds:

1. bootstrap v1 on the non-contiguous classes [1, 3, 5] of a dataset holding classes 0..5;
2. refresh → v2 (classes 0..5), then a partial backfill of half the gallery with v2 goes live
   with v2 as champion: the live gallery now mixes v1 and v2 features;
3. refresh on unchanged inputs → nothing trained (no-op, recorded in MLflow);
4. the dataset grows to classes 0..7 → v3, trained against v2 *and* v1 and gated as served on
   the mixed gallery; a standalone transform backfill maps the mixed gallery into v3's space with
   the maps that refresh trained;
5. a challenger trained with no compatibility terms at all (``compat.method = "independent"``) is
   better but incompatible: not blessed, its full backfill beats live, so auto-promotion builds
   that backfill and puts it live (the gate follows the chosen option, DESIGN.md §16);
6. a deliberately bad candidate (a learning rate that barely moves the weights) is rejected
   with no backfill, and auto-promotion leaves it alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.classes import ClassMapError, load_class_map
from hotswap.components.gallery.provenance import feature_models, feature_spaces
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.tasks.context import gallery_store

from tests.fixtures.lifecycle import fast_overrides

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _overrides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("chain-home")
    overrides = fast_overrides(str(home), str(home / "store"), None)
    overrides.update(
        model_name="chaintest",
        data={
            "source": "synthetic:1200:8",
            "image_size": 16,
            "classes": [0, 1, 2, 3, 4, 5],
            "bootstrap_classes": [1, 3, 5],
        },
        training={"epochs": 2, "embedding_dim": 16, "new_arch": "small"},
    )
    return overrides


def _grown(overrides: dict[str, Any], **training: Any) -> dict[str, Any]:
    data = {**overrides["data"], "classes": list(range(8))}
    return {**overrides, "data": data, "training": {**overrides["training"], **training}}


def _incompatible(overrides: dict[str, Any]) -> dict[str, Any]:
    """The grown data set trained with no compatibility term: features unrelated to the live ones."""
    return {**_grown(overrides), "compat": {"method": "independent"}}


@pytest.fixture(scope="module")
def chain(prefect_harness, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from hotswap.flows.backfill import backfill
    from hotswap.flows.bootstrap import bootstrap
    from hotswap.flows.refresh import refresh
    from hotswap.flows.switch import switch_live

    overrides = _overrides(tmp_path_factory)
    settings = HotswapSettings(**overrides)
    steps: dict[str, Any] = {"overrides": overrides, "settings": settings}
    steps["bootstrap"] = bootstrap(overrides=overrides)
    steps["refresh2"] = refresh(overrides=overrides, auto_promote=False)
    mixed = backfill(overrides=overrides, mode="partial", fraction=0.5, version="2")
    steps["mixed_gallery"] = mixed["gallery_version"]
    switch_live(settings, "2", mixed["gallery_version"])
    registry = ModelRegistry.from_settings(settings)
    steps["versions_before_noop"] = [v.version for v in registry.list_versions()]
    steps["noop"] = refresh(overrides=overrides, auto_promote=False)
    steps["versions_after_noop"] = [v.version for v in registry.list_versions()]
    steps["refresh3"] = refresh(overrides=_grown(overrides), auto_promote=False)
    # the maps v3's refresh trained, used by a standalone transform backfill (staged, not published)
    steps["transformed"] = backfill(overrides=_grown(overrides), mode="transform", version="3")
    steps["live_after_transform"] = gallery_store(settings).read_current(settings.gallery_name)
    galleries = gallery_store(settings)
    steps["live_before_incompatible"] = (registry.aliases(), galleries.read_current(settings.gallery_name))
    steps["incompatible"] = refresh(overrides=_incompatible(overrides), auto_promote=True)
    steps["champion_before_bad"] = registry.aliases()["champion"]
    steps["galleries_before_bad"] = galleries.list_versions(settings.gallery_name, include_staged=True)
    steps["bad"] = refresh(overrides=_grown(overrides, lr=1e-7, epochs=1), auto_promote=True)
    steps["galleries_after_bad"] = galleries.list_versions(settings.gallery_name, include_staged=True)
    return steps


def test_bootstrap_on_a_non_contiguous_class_subset_records_its_class_map(chain):
    settings = chain["settings"]
    registry = ModelRegistry.from_settings(settings)
    assert chain["bootstrap"]["version"] == "1"
    v1 = registry.load_model("1")
    assert v1.spec.num_classes == 3
    assert load_class_map(registry, "1", 3) == ["1", "3", "5"]
    assert load_class_map(registry, "2", 6) == ["0", "1", "2", "3", "4", "5"]
    assert load_class_map(registry, "3", 8) == [str(c) for c in range(8)]


def test_an_unknown_bootstrap_class_is_one_line_before_anything_is_written(tmp_path):
    from hotswap.tasks.training import train_first_model

    home = tmp_path / "home"
    overrides = fast_overrides(str(home), str(home / "store"), None)
    overrides["data"] = {"source": "synthetic:200:4", "image_size": 16, "bootstrap_classes": [0, 1, 99]}
    with pytest.raises(ClassMapError) as error:
        train_first_model.fn(HotswapSettings(**overrides))
    message = str(error.value)
    assert "\n" not in message and message.startswith("data.bootstrap_classes:") and "99" in message
    assert not home.exists()  # no MLflow database, no store, nothing half-written


def test_a_run_that_held_the_lease_itself_leaves_the_status_it_ended_in(chain):
    """The fixture's flows ran in this process, each taking the gallery's lease itself (as on a
    worker): the last one, having released it, left the status of the state it ended in, so the
    next `status` with the same settings reads nothing again (components/lifecycle/status_snapshot.py)."""
    from hotswap.components.lifecycle.status_snapshot import cached_status

    def read_again(_: Any) -> dict[str, Any]:
        raise AssertionError("status was read in full: the run left no snapshot")

    last_run = HotswapSettings(**_grown(chain["overrides"]))  # the data the last refreshes saw
    state = cached_status(last_run, read_again)
    assert state["champion"] == ModelRegistry.from_settings(last_run).aliases()["champion"]
    assert state["live_gallery_version"] == gallery_store(last_run).read_current(last_run.gallery_name)


def test_refresh_on_unchanged_inputs_trains_nothing_and_says_why(chain):
    settings, noop = chain["settings"], chain["noop"]
    assert noop["noop"] is True and noop["champion"] == "2"
    assert "nothing changed since the champion v2" in noop["reason"]
    assert chain["versions_after_noop"] == chain["versions_before_noop"]
    registry = ModelRegistry.from_settings(settings)
    runs = registry.client.search_runs([registry.experiment_id], "tags.`hotswap.kind` = 'refresh-noop'")
    assert len(runs) == 1 and runs[0].data.tags["hotswap.noop_reason"] == noop["reason"]
    # every training run carries the settings hash the check compares
    assert registry.get_tags("2")["hotswap.settings_hash"] == registry.get_tags("1")["hotswap.settings_hash"]


def test_the_gate_uses_the_mixed_live_gallery(chain):
    settings, third = chain["settings"], chain["refresh3"]
    registry = ModelRegistry.from_settings(settings)
    assert third["noop"] is False and third["champion"] == "2" and third["challenger"] == "3"
    # the live gallery really mixes two model versions ...
    shares = {t["version"]: t["share"] for t in third["targets"]}
    assert set(shares) == {"1", "2"} and 0.3 < shares["1"] < 0.7
    weights = {t["version"]: t["weight"] for t in third["targets"]}
    assert weights["2"] >= settings.compat.champion_floor_weight
    assert sum(weights.values()) == pytest.approx(1.0)
    # ... training regularised towards both (recorded with the run) ...
    run = registry.client.get_run(registry.resolve("3").run_id)
    assert '"version": "1"' in run.data.params["targets"] and '"version": "2"' in run.data.params["targets"]
    # ... and the gate composed its validation gallery like the live one
    report = registry.load_report("3")
    served = report.served
    assert served is not None and served.gallery_version == chain["mixed_gallery"]
    assert set(served.composed_counts) == {"1", "2"} and min(served.composed_counts.values()) > 10
    assert served.live != served.champion_only  # a champion-only validation would have seen other numbers
    gating = [c for c in report.checks if c.gating]
    assert {c.name for c in gating} == {"as_served", "new_model"}
    for check in (c for c in gating if c.name == "as_served"):
        assert check.baseline == served.live[check.metric]
        assert check.candidate == served.candidate[check.metric]
    assert all(not c.gating for c in report.checks if c.name == "cross_test")  # audit rows stay
    assert {"old/old", "new/new", "new/old", "old/new"} <= set(report.matrix)
    assert report.blessed == all(c.passed for c in gating)
    decision = registry.load_artifact_bytes("3", "decision/decision.json").decode()
    assert '"live_quality"' in decision and '"1":' in decision


def test_a_candidate_worse_than_the_live_system_is_rejected_without_a_backfill(chain):
    settings, bad = chain["settings"], chain["bad"]
    registry = ModelRegistry.from_settings(settings)
    assert bad["noop"] is False and bad["blessed"] is False
    assert bad["decision"] == "reject" and bad["gallery_version"] is None and bad["promoted"] is False
    assert chain["galleries_after_bad"] == chain["galleries_before_bad"]  # auto-promotion built nothing
    assert registry.aliases()["champion"] == chain["champion_before_bad"]
    from hotswap.components.decision.storage import load_decision

    record = load_decision(registry, bad["challenger"])
    assert record.live_quality is not None and record.better_than_champion is False
    report = registry.load_report(bad["challenger"])
    assert any(c.name == "new_model" and not c.passed for c in report.checks)
    # either rule rejects it: no option beats live as served, or not blessed and not better
    reason = record.reasons[0]
    assert ("not better" in reason or "no option beats the live system" in reason) and "no backfill" in reason


def test_a_better_but_incompatible_model_is_promoted_by_auto_promotion_after_its_full_backfill(chain):
    from hotswap.components.decision.storage import load_decision
    from hotswap.components.gallery.provenance import feature_models

    settings, result = chain["settings"], chain["incompatible"]
    registry, galleries = ModelRegistry.from_settings(settings), gallery_store(settings)
    (aliases_before, live_before) = chain["live_before_incompatible"]
    version = result["challenger"]
    # given a challenger whose queries cannot search the live (mixed v1/v2) features: not blessed
    report = registry.load_report(version)
    assert result["blessed"] is False and report.blessed is False
    assert any(c.name == "as_served" and not c.passed for c in report.checks)
    # when the refresh decides with auto-promotion on
    decision = load_decision(registry, version)
    # then its full backfill beats live as served, which makes it promotable without a blessing
    assert result["decision"] == decision.mode == "full"
    assert result["promotable"] is True and decision.promotable is True
    assert "needs no compatibility" in result["promotable_reason"]
    assert decision.chosen_option.quality["map"] > decision.live_quality["map"]
    # and the backfill was built and switched to: every live item is the new model's
    assert result["promoted"] is True and result["gallery_version"] == f"v{version}-full"
    assert registry.aliases()["previous"] == aliases_before["champion"]
    assert chain["champion_before_bad"] == version
    switched_to = load_decision(registry, version).gallery_version
    assert switched_to == result["gallery_version"] != live_before
    assert set(feature_models(galleries, settings.gallery_name, switched_to).tolist()) == {version}


def test_promote_refuses_a_candidate_worse_than_live_unless_forced(chain):
    """The reviewer's approval is not enough for a rejected candidate: one line says why and how
    to override; with ``force`` it goes live (and the version records that it was forced)."""
    from hotswap.components.core.errors import classify
    from hotswap.components.decision.promotion_gate import WorseThanLiveError
    from hotswap.flows.promote import PromotionInput, promote

    settings, bad = chain["settings"], chain["bad"]
    overrides, version = _grown(chain["overrides"], lr=1e-7, epochs=1), bad["challenger"]
    registry, galleries = ModelRegistry.from_settings(settings), gallery_store(settings)
    before = (
        registry.aliases(),
        galleries.read_current(settings.gallery_name),
        galleries.list_versions(settings.gallery_name, include_staged=True),
    )
    for mode in ("as-decided", "full"):
        with pytest.raises(WorseThanLiveError) as refused:
            promote(
                overrides=overrides,
                version=version,
                answer=PromotionInput(approve=True, reason="looks fine", backfill_mode=mode),
            )
        failure = classify(refused.value)
        assert failure.exit_code == 3 and failure.line() == str(refused.value)
        assert failure.line().startswith(f"v{version} was not promoted: it is worse than the live system")
        assert failure.line().endswith("rerun with --force to promote it anyway")
    after = (
        registry.aliases(),
        galleries.read_current(settings.gallery_name),
        galleries.list_versions(settings.gallery_name, include_staged=True),
    )
    assert after == before and "promotion.status" not in registry.get_tags(version)

    result = promote(
        overrides=overrides,
        version=version,
        answer=PromotionInput(approve=True, reason="forced on purpose", backfill_mode="full", force=True),
    )
    assert result["promoted"] is True and registry.aliases()["champion"] == version
    tags = registry.get_tags(version)
    assert tags["promotion.status"] == "approved" and "reject" in tags["promotion.forced"]


def test_a_standalone_transform_backfill_maps_every_row_without_reading_an_image(chain):
    settings = chain["settings"]
    galleries = gallery_store(settings)
    version = chain["transformed"]["gallery_version"]
    manifest = galleries.load_manifest(settings.gallery_name, version)
    backfill = manifest.metadata["backfill"]
    assert backfill["mode"] == "transform" and backfill["reextracted"] == 0
    assert backfill["source_version"] == chain["mixed_gallery"]
    assert sorted(backfill["mapped"]) == ["1", "2"]  # one map per model version of the mixed gallery
    assert set(feature_spaces(galleries, settings.gallery_name, version).tolist()) == {"3"}
    assert set(feature_models(galleries, settings.gallery_name, version).tolist()) == {"1>3", "2>3"}
    assert chain["live_after_transform"] == chain["mixed_gallery"]  # staged, not published
