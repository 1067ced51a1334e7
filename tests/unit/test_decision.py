"""The decision policy on synthetic features: which option wins, when, and what the record says."""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.core.configs import DecisionConfig, DPQConfig
from hotswap.components.decision.costs import measure_costs
from hotswap.components.decision.decide import decide_from_features
from hotswap.components.decision.record import CostModel, DecisionError, DecisionRecord
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_training import train_dpq
from pydantic import ValidationError

N_CLASSES, PER_CLASS, DIM = 8, 25, 16
COST = CostModel(extract_seconds_per_item=2e-3, encode_seconds_per_item=1e-5)
FAST = dict(partial_fractions=(0.2, 0.4, 0.6, 0.8))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    """New features: clean clusters. 'close' old features: the new ones slightly perturbed
    (a compatible model). 'foreign': an unrelated space (an independently trained model)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    centres = rng.standard_normal((N_CLASSES, DIM))
    new = _unit(centres[labels] + 0.35 * rng.standard_normal((len(labels), DIM)))
    close = _unit(new + 0.08 * rng.standard_normal(new.shape))
    foreign = _unit(rng.standard_normal((N_CLASSES, DIM))[labels] + 0.35 * rng.standard_normal(new.shape))
    return {"labels": labels, "new": new, "close": close, "foreign": foreign, "centres": _unit(centres)}


@pytest.fixture(scope="module")
def codebooks(features) -> DPQCodebooks:
    both = np.concatenate([features["new"], features["close"]])
    return train_dpq(both, config=DPQConfig(n_blocks=2, n_codewords=32, epochs=0))


def run(features, old: str = "close", blessed: bool = True, **config):
    return decide_from_features(
        features[old],
        features["new"],
        features["labels"],
        gallery_items=10_000,
        blessed=blessed,
        cost=COST,
        prototypes=features["centres"],
        config=DecisionConfig(**{**FAST, **config}),
        versions={"old_model_version": "3", "new_model_version": "4"},
    )


def test_compatible_blessed_model_skips_at_zero_cost(features) -> None:
    record = run(features, quality_target=0.9, quantized=False)
    assert record.mode == "skip" and record.fraction == 0.0
    skip = record.chosen_option
    assert skip.items_to_extract == skip.items_to_encode == 0 and skip.estimated_seconds == 0
    assert skip.relative_quality >= 0.9 and skip.meets_target
    full = record.options[-1]
    assert full.mode == "full" and full.relative_quality == pytest.approx(1.0)
    assert full.estimated_seconds == pytest.approx(10_000 * (2e-3 + 1e-5))


def test_bad_old_codes_make_requantize_the_cheapest_good_option(features, codebooks) -> None:
    rng = np.random.default_rng(1)
    junk = DPQCodebooks((0.05 * rng.standard_normal((1, 2, DIM))).astype(np.float32))  # 1 bit per item
    record = decide_from_features(
        features["close"], features["new"], features["labels"], gallery_items=10_000, blessed=True,
        cost=COST, old_codebooks=junk, new_codebooks=codebooks, prototypes=features["centres"],
        config=DecisionConfig(quality_target=0.9, **FAST),
    )  # fmt: skip
    skip, requantize = record.options[0], record.options[1]
    assert not skip.meets_target and requantize.meets_target
    assert record.mode == "requantize" and record.chosen_option.items_to_extract == 0
    assert requantize.float_quality == skip.float_quality  # same features, only the codes differ


def test_incompatible_features_need_reextraction_even_when_blessed(features) -> None:
    record = run(features, old="foreign", quality_target=0.9, quantized=False)
    assert record.options[0].relative_quality < 0.5
    assert record.mode in ("partial", "full")
    chosen = record.chosen_option
    assert chosen.meets_target
    # the cheapest among those meeting the target
    assert chosen.estimated_seconds == min(o.estimated_seconds for o in record.options if o.meets_target)
    if record.mode == "partial":
        assert chosen.items_to_extract == int(chosen.fraction * 10_000)


@pytest.mark.parametrize(
    ("action", "chosen", "fraction"), [("full", "full", 1.0), ("reject", "reject", None)]
)
def test_unblessed_model_gets_full_or_reject(features, action, chosen, fraction) -> None:
    record = run(features, blessed=False, quality_target=0.5, unblessed_action=action)
    assert (record.mode, record.fraction) == (chosen, fraction)
    assert "not blessed" in record.reasons[0]
    assert all(not o.eligible for o in record.options if o.mode != "full")
    assert record.options[0].meets_target  # good numbers do not override a failed blessing


def test_record_round_trips_and_renders(features) -> None:
    record = run(features, quality_target=0.9)
    again = DecisionRecord.from_json(record.to_json())
    assert again == record
    text = record.to_markdown()
    assert f"# Backfill decision: **{record.mode}**" in text
    assert text.count("\n| partial |") == len(FAST["partial_fractions"])
    assert "**←**" in text and "3 → 4" in text
    assert len(record.curve["fractions"]) == len(FAST["partial_fractions"]) + 2
    with pytest.raises(DecisionError, match="not a valid decision record"):
        DecisionRecord.from_json('{"chosen": "sideways"}')


def test_default_candidates_are_the_inner_points_of_the_22_point_curve() -> None:
    fractions = DecisionConfig().fractions()
    assert (
        len(fractions) == 20
        and fractions[0] == pytest.approx(1 / 21)
        and fractions[-1] == pytest.approx(20 / 21)
    )


@pytest.mark.parametrize(
    "bad",
    [{"quality_target": 0}, {"quality_target": 1.2}, {"partial_fractions": (0.0, 0.5)}, {"metric": "ndcg"}],
)
def test_bad_config_is_refused(bad) -> None:
    with pytest.raises(ValidationError):
        DecisionConfig(**bad)


def test_bad_inputs_are_named(features) -> None:
    with pytest.raises(DecisionError, match="must be the same items"):
        decide_from_features(
            features["close"][:10],
            features["new"],
            features["labels"],
            gallery_items=5,
            blessed=True,
            cost=COST,
        )
    with pytest.raises(DecisionError, match="gallery_items"):
        decide_from_features(
            features["close"], features["new"], features["labels"], gallery_items=0, blessed=True, cost=COST
        )


def test_measured_costs_are_positive_and_extraction_dominates() -> None:
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=3, image_size=16)
    model = build_model(spec, seed=0).eval()
    images = np.random.default_rng(0).random((32, 1, 16, 16), dtype=np.float32)
    books = DPQCodebooks(np.random.default_rng(0).standard_normal((2, 16, DIM)).astype(np.float32))
    cost = measure_costs(model, books, images, repeats=1)
    assert cost.sample_size == 32 and cost.encode_seconds_per_item > 0
    assert cost.extract_seconds_per_item > cost.encode_seconds_per_item
    assert measure_costs(model, None, images, repeats=1).encode_seconds_per_item == 0
