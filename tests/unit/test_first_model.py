"""A first model is blessed only when its self-test clearly beats chance."""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.lifecycle.first_model import (
    FirstModelError,
    chance_top1,
    check_first_model,
    required_top1,
)


def test_chance_is_the_top1_of_a_random_ranking() -> None:
    # given 10 balanced classes of 50: the nearest other item shares the class 49/499 of the time
    labels = np.repeat(np.arange(10), 50)
    assert chance_top1(labels) == pytest.approx(49 / 499)
    # and a random ranking measured by simulation agrees
    rng = np.random.default_rng(0)
    hits = [
        labels[i] == labels[rng.choice(np.delete(np.arange(500), i))] for i in range(500) for _ in range(4)
    ]
    assert np.mean(hits) == pytest.approx(chance_top1(labels), abs=0.02)


def test_an_unbalanced_set_has_a_higher_chance() -> None:
    assert chance_top1(np.array([0] * 90 + [1] * 10)) > chance_top1(np.repeat([0, 1], 50))


def test_the_bar_is_three_standard_errors_or_two_points_above_chance() -> None:
    few = np.repeat(np.arange(4), 5)  # 20 queries: the standard error dominates
    many = np.repeat(np.arange(2), 50_000)  # 100k queries: the two-point floor dominates
    assert required_top1(few) - chance_top1(few) > 0.2
    assert required_top1(many) - chance_top1(many) == pytest.approx(0.02)


def test_a_model_at_chance_is_refused_in_one_line_naming_what_to_change() -> None:
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(FirstModelError) as error:
        check_first_model(0.11, labels, "1", "val")
    message = str(error.value)
    assert "\n" not in message and "0.110" in message and f"{chance_top1(labels):.3f}" in message
    assert "training.epochs" in message and "--force" in message
    check_first_model(0.6, labels, "1", "val")  # a model that learned passes
