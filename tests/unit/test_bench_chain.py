"""bench/chain.py builds each step's settings from the chain and the policy, and names a missing field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chain import CHAINS, ChainSettingsError, check_settings, merge, parse_settings, step_overrides


def test_steps_carry_the_classes_seen_so_far_and_the_policy(tmp_path: Path):
    chain = CHAINS["mnist"]
    first = step_overrides(chain, "always-full", 0, tmp_path, 10)
    assert first["data"] == {"source": "mnist5k", "bootstrap_classes": [0, 1, 2, 3]}
    assert first["decision"] == {"policy": "full"}
    middle = step_overrides(chain, "champion-only", 2, tmp_path, 10)
    assert middle["data"]["classes"] == list(range(8)) and middle["compat"] == {"targets": "champion"}
    last = step_overrides(chain, "default", 3, tmp_path, 10)
    assert "classes" not in last["data"] and "decision" not in last  # all classes: the data set itself
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_a_field_the_settings_do_not_know_fails_in_one_line(tmp_path: Path):
    with pytest.raises(ChainSettingsError, match=r"step 2: settings field\(s\) data\.nonexistent unknown"):
        check_settings({"home": str(tmp_path), "data": {"nonexistent": [1]}}, "chain x, policy y, step 2")
    with pytest.raises(ChainSettingsError, match=r"settings rejected \(training\.epochs"):
        check_settings({"home": str(tmp_path), "training": {"epochs": 0}}, "step 3")
    check_settings(step_overrides(CHAINS["mnist"], "default", 0, tmp_path, 10), "step 1")


def test_set_adds_a_nested_setting_to_every_step(tmp_path: Path):
    extra = parse_settings(["compat.ract_weight=1.0", "decision.validation_classes=trained"])
    assert extra == {"compat": {"ract_weight": 1.0}, "decision": {"validation_classes": "trained"}}
    overrides = step_overrides(CHAINS["mnist"], "always-full", 1, tmp_path, 10, extra=extra)
    assert overrides["decision"] == {"policy": "full", "validation_classes": "trained"}
    check_settings(overrides, "step 2")
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        parse_settings(["compat.ract_weight"])


def test_the_rgb_chain_reads_a_manifest_whose_val_and_gallery_use_held_out_styles(tmp_path: Path):
    import pandas as pd

    from bench.rgb_shapes import HELD_OUT_STYLES, TRAIN_STYLES, write_rgb_shapes

    manifest = write_rgb_shapes(tmp_path, n_classes=3, per_class=10, size=16)
    frame = pd.read_csv(manifest)
    assert len(frame) == 30 and sorted(frame["label"].unique()) == ["shape00", "shape01", "shape02"]
    assert frame.groupby("split").size().to_dict() == {"test": 6, "train": 18, "val": 6}
    assert all((tmp_path / uri).is_file() for uri in frame["uri"])
    assert not set(TRAIN_STYLES) & set(HELD_OUT_STYLES)
    assert CHAINS["rgb"].steps[0] == tuple(f"shape{c:02d}" for c in range(10))
    assert write_rgb_shapes(tmp_path / "again", 3, 10, 16).read_bytes() == manifest.read_bytes()
