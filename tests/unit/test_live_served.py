"""The live system: targets from the gallery's composition, composed validation galleries, class maps,
the settings hash and the no-op rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.compat.served import assign_gallery_models, served_evaluation, served_metrics
from hotswap.components.core.fingerprint import noop_reason, settings_hash
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.data.classes import ClassMapError, check_classes, cross_map, to_head_labels
from hotswap.components.lifecycle.live import LiveComposition, compatibility_targets
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.registry.records import ModelVersionInfo

# --------------------------------------------------------------------------- targets


def _mix(**counts: int) -> LiveComposition:
    return LiveComposition(
        gallery_version="g", codebook_version="2", counts={k[1:]: v for k, v in counts.items()}
    )


def test_targets_follow_the_live_shares_with_a_champion_floor():
    targets = compatibility_targets(_mix(v1=60, v2=40), "2", min_share=0.1, champion_floor=0.25)
    assert [(t.version, t.champion) for t in targets] == [("2", True), ("1", False)]
    assert [t.weight for t in targets] == pytest.approx([0.4, 0.6])
    # the champion holds 5 %: its weight is raised to the floor, the rest keep their proportions
    targets = compatibility_targets(_mix(v1=90, v2=5, v3=5), "2", min_share=0.05, champion_floor=0.25)
    assert {t.version: t.weight for t in targets} == pytest.approx(
        {"2": 0.25, "1": 0.75 * 0.9 / 0.95, "3": 0.75 * 0.05 / 0.95}
    )
    # shares below min_share are no targets; after a skip the champion holds nothing and still leads
    targets = compatibility_targets(_mix(v1=97, v3=3), "4", min_share=0.1, champion_floor=0.3)
    assert {t.version: t.weight for t in targets} == pytest.approx({"4": 0.3, "1": 0.7})


def test_champion_mode_and_a_champion_only_gallery_give_todays_single_target():
    for targets in (
        compatibility_targets(_mix(v1=50, v2=50), "2", mode="champion"),
        compatibility_targets(_mix(v2=100), "2"),
        compatibility_targets(None, "2"),
    ):
        assert [(t.version, t.weight) for t in targets] == [("2", 1.0)]


# --------------------------------------------------------------------------- composed galleries


def test_assignment_is_seeded_and_keeps_the_shares_within_every_class():
    labels = np.repeat(np.arange(10), 37)
    shares = {"1": 0.7, "2": 0.25, "3": 0.05}
    a = assign_gallery_models(labels, shares, seed=4)
    assert np.array_equal(a, assign_gallery_models(labels, shares, seed=4))
    assert not np.array_equal(a, assign_gallery_models(labels, shares, seed=5))
    for label in range(10):
        rows = a[labels == label]
        for version, share in shares.items():
            assert abs((rows == version).sum() - share * len(rows)) <= 1
    assert abs((a == "3").mean() - 0.05) < 0.02


class _Boost:
    """A calibration that ranks one model's items above everything else."""

    def __init__(self, version: str) -> None:
        self.version = version

    def adjust(self, scores: np.ndarray, gallery_models: np.ndarray) -> np.ndarray:
        return scores + 10.0 * (gallery_models == self.version)[None, :]


def test_served_metrics_applies_the_calibration_and_defaults_to_raw_scores():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    feats = np.eye(4)[labels] + 0.3 * rng.normal(size=(40, 4))
    models = np.where(np.arange(40) % 2 == 0, "1", "2")
    raw = served_metrics(feats, labels, feats, labels, models, exclude_self=True)
    assert raw == retrieval_metrics(feats, labels, feats, labels, exclude_self=True).as_dict()
    boosted = served_metrics(feats, labels, feats, labels, models, _Boost("1"), exclude_self=True)
    assert boosted["map"] < raw["map"]


def test_served_evaluation_composes_the_gallery_like_the_live_one():
    data = make_synthetic(120, 4, image_size=12, seed=1).split("val")

    def model(seed: int):
        torch.manual_seed(seed)
        return build_model(BackboneSpec(arch="small", embedding_dim=8, num_classes=4, image_size=12)).eval()

    champion, older, candidate = model(0), model(1), model(2)
    common = dict(candidate=candidate, champion=champion, data=data, codebooks=None)
    alone = served_evaluation(
        **common, gallery_models={}, composition=_mix(v2=10), candidate_version="3", champion_version="2"
    )
    assert alone.composed_counts == {"2": len(data)} and alone.live == alone.champion_only
    mixed = served_evaluation(
        **common,
        gallery_models={"1": older},
        composition=_mix(v1=50, v2=50),
        candidate_version="3",
        champion_version="2",
    )
    assert set(mixed.composed_counts) == {"1", "2"} and mixed.live != mixed.champion_only
    assert mixed.champion_only == alone.champion_only and mixed.live_shares == {"1": 0.5, "2": 0.5}
    from hotswap.components.models.training import extract_features

    given = {"2": extract_features(champion, data), "3": extract_features(candidate, data)}
    reused = served_evaluation(
        **common,
        gallery_models={"1": older},
        composition=_mix(v1=50, v2=50),
        candidate_version="3",
        champion_version="2",
        features=given,
    )
    assert reused == mixed  # precomputed features (from the pairwise matrix) give the same numbers


# --------------------------------------------------------------------------- class maps


def test_class_lists_are_checked_against_the_data_in_one_line():
    digits = [str(i) for i in range(10)]
    # integer labels: ints stand for the label of that name; the result is names in the data's order
    assert check_classes("data.bootstrap_classes", [9, 1, 5], digits) == ["1", "5", "9"]
    assert check_classes("data.bootstrap_classes", ["9", 1, "5"], digits) == ["1", "5", "9"]
    assert check_classes("data.classes", None, digits) is None
    with pytest.raises(
        ClassMapError, match=r"^data\.bootstrap_classes: class\(es\) \['99'\] are not in the data"
    ):
        check_classes("data.bootstrap_classes", [0, 1, 99], digits)
    with pytest.raises(ClassMapError, match="more than once"):
        check_classes("data.classes", [1, 1], digits)
    with pytest.raises(ClassMapError, match="more than once"):
        check_classes("data.classes", [1, "1"], digits)  # the same label, once as a number
    # named labels: classes are listed by name
    animals = ["cat", "dog", "emu"]
    assert check_classes("data.classes", ["emu", "cat"], animals) == ["cat", "emu"]
    with pytest.raises(ClassMapError, match=r"^data\.classes: class\(es\) \['zebra'\] are not in the data"):
        check_classes("data.classes", ["cat", "zebra"], animals)


def test_numbers_are_refused_where_the_labels_are_names():
    animals = ["cat", "dog", "emu"]
    with pytest.raises(
        ClassMapError,
        match=r"^data\.bootstrap_classes: 0 is a number, but the data's labels are names .*by name$",
    ):
        check_classes("data.bootstrap_classes", [0, 1], animals)
    with pytest.raises(ClassMapError, match=r"^data\.classes: 1 is a number"):
        check_classes("data.classes", ["cat", 1], animals)  # mixed: one number is enough to refuse
    # a mix of integer and named labels is not "integer labels" either
    with pytest.raises(ClassMapError, match=r"^data\.classes: 1 is a number"):
        check_classes("data.classes", [1], ["1", "2", "cat"])
    assert check_classes("data.classes", ["1", "cat"], ["1", "2", "cat"]) == ["1", "cat"]


def test_head_labels_and_cross_maps_follow_the_recorded_maps():
    data = make_synthetic(40, 10, image_size=8, seed=0).with_classes([1, 3, 5, 7, 9])
    odd = ["1", "3", "5", "7", "9"]
    assert [data.class_names[c] for c in np.unique(data.labels)] == odd
    head = to_head_labels(data, odd)
    assert sorted(set(head.labels.tolist())) == [0, 1, 2, 3, 4]
    assert np.array_equal(np.array([1, 3, 5, 7, 9])[head.labels], data.labels)
    # the map is by name, not by position: a reordered map gives the reordered rows
    reordered = to_head_labels(data, ["9", "7", "5", "3", "1"])
    assert np.array_equal(4 - reordered.labels, head.labels)
    assert cross_map([str(i) for i in range(10)], odd) == {1: 0, 3: 1, 5: 2, 7: 3, 9: 4}
    assert cross_map(["cat", "dog", "emu"], ["emu", "cat"]) == {0: 1, 2: 0}
    with pytest.raises(ClassMapError, match="not in the head's class map"):
        to_head_labels(data, ["1", "3"])


# --------------------------------------------------------------------------- no-op refresh


def test_the_settings_hash_ignores_locations_and_secrets_but_not_what_shapes_a_model(tmp_path):
    base = HotswapSettings(home=tmp_path / "a")
    moved = HotswapSettings(
        home=tmp_path / "b",
        tracking_uri="postgresql://user:secret@db/mlflow",
        store_uri="s3://bucket/x",
        torch_threads=2,
        backfill={"workers": 4},
    )
    assert settings_hash(base) == settings_hash(moved)
    assert settings_hash(base) != settings_hash(HotswapSettings(home=tmp_path, training={"epochs": 3}))
    assert settings_hash(base) != settings_hash(HotswapSettings(home=tmp_path, data={"classes": [0, 1]}))


def _info(version: str, **tags: str) -> ModelVersionInfo:
    return ModelVersionInfo(name="m", version=version, run_id="r", source="s", tags=tags)


def test_noop_when_the_champion_or_a_challenger_against_it_was_trained_on_the_same_inputs():
    same = {"data.version": "d1", "hotswap.settings_hash": "h1", "hotswap.job": "refresh"}
    champion = _info("2", **same)
    assert "nothing changed since the champion v2" in noop_reason(champion, [champion], "d1", "h1")
    assert noop_reason(champion, [champion], "d2", "h1") is None
    assert noop_reason(champion, [champion], "d1", "h2") is None
    # a bootstrap model trained other classes with another architecture: a refresh has work to do
    first = _info("1", **{**same, "hotswap.job": "bootstrap"})
    assert noop_reason(first, [first], "d1", "h1") is None
    rejected = _info("2", **same, **{"hotswap.old_version": "1", "backfill.decision": "reject"})
    reason = noop_reason(first, [first, rejected], "d1", "h1")
    assert "v2 was already trained against the champion v1" in reason and "reject" in reason
    crashed = _info("2", **same, **{"hotswap.old_version": "1"})  # registered, never decided
    assert noop_reason(first, [first, crashed], "d1", "h1") is None


def test_a_growing_image_folder_is_read_again_with_a_new_dataset_version(tmp_path):
    from hotswap.components.data.sources import open_source
    from PIL import Image

    rng = np.random.default_rng(0)

    def write(name: str, count: int) -> None:
        (tmp_path / name).mkdir(exist_ok=True)
        for i in range(count):
            Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).save(tmp_path / name / f"{i}.png")

    write("a", 3)
    write("b", 3)
    first = open_source(str(tmp_path))
    assert open_source(str(tmp_path)) is first  # unchanged: read once
    assert first.source.image_shape() == (12, 12, 1)
    write("c", 3)  # a new class arrives
    grown = open_source(str(tmp_path))
    assert len(grown) == 9 and grown.num_classes == 3 and grown.version != first.version
