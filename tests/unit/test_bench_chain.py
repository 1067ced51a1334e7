"""bench/chain.py builds each step's settings from the chain and the policy, and names a missing field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chain import CHAINS, ChainSettingsError, check_settings, merge, step_overrides


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
