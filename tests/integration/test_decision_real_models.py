"""The decision on real trained models (MNIST-5k): compatible ⇒ no re-extraction; incompatible ⇒ full.

Tiny but real: an old "small" net, a Dual-Tuning-compatible new net and an independently trained
one (a few epochs each on the train split), real DPQ codebooks, the real compatibility report for
the blessing, and the decision estimated on (half of) the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hotswap.components.compat.cross_eval import compatibility_matrix
from hotswap.components.compat.dual_tuning import train_compatible
from hotswap.components.compat.gate import build_report
from hotswap.components.compat.transform import TransformConfig, fit_transform
from hotswap.components.core.configs import DecisionConfig, DPQConfig
from hotswap.components.data.images import ImageSet
from hotswap.components.decision.decide import decide, decide_from_features
from hotswap.components.decision.record import CostModel, DecisionError
from hotswap.components.lifecycle.live import LiveComposition
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import TrainConfig, extract_features, train_model
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_training import train_dpq

pytestmark = pytest.mark.slow

DIM = 32
GALLERY_ITEMS = 100_000
# Fewer candidate fractions and one timing run keep the test fast; the policy is the same.
FAST = dict(partial_fractions=(0.25, 0.5, 0.75), timing_sample=64, timing_repeats=1)


@dataclass
class Upgrade:
    old: EmbeddingModel
    compatible: EmbeddingModel
    independent: EmbeddingModel
    codebooks: dict[str, DPQCodebooks]
    validation: ImageSet


@pytest.fixture(scope="module")
def upgrade(mnist: ImageSet) -> Upgrade:
    train = mnist.split("train")
    val = mnist.split("val")
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=10)
    old = build_model(spec, seed=0)
    train_model(old, train, TrainConfig(epochs=2, seed=0), progress=False)
    compatible, _ = train_compatible(
        old, spec, train, train_config=TrainConfig(epochs=4, seed=1), progress=False
    )
    independent = build_model(spec, seed=2)
    train_model(independent, train, TrainConfig(epochs=3, seed=2), progress=False)
    dpq = DPQConfig(n_blocks=2, n_codewords=64, epochs=2)
    codebooks = {
        name: train_dpq(extract_features(m, train), train.labels, classifier=m.head, config=dpq)
        for name, m in (("old", old), ("compatible", compatible), ("independent", independent))
    }
    half = val.subset(np.arange(len(val)) % 2 == 0, name="val-half")
    return Upgrade(old, compatible, independent, codebooks, half)


def blessing(upgrade: Upgrade, new: EmbeddingModel) -> bool:
    matrix = compatibility_matrix(
        upgrade.old, new, upgrade.validation, pairs=("old/old", "new/new", "new/old")
    )
    return build_report(matrix, old_version="1", new_version="2", data_version="mnist5k-val").blessed


def test_compatible_model_skips_reextraction(upgrade: Upgrade) -> None:
    assert blessing(upgrade, upgrade.compatible)
    record = decide(
        old_model=upgrade.old,
        new_model=upgrade.compatible,
        validation=upgrade.validation,
        gallery_items=GALLERY_ITEMS,
        blessed=True,
        old_codebooks=upgrade.codebooks["old"],
        new_codebooks=upgrade.codebooks["compatible"],
        config=DecisionConfig(quality_target=0.8, **FAST),
        old_model_version="1",
        new_model_version="2",
    )
    assert record.mode in ("skip", "requantize"), record.to_markdown()
    chosen, full = record.chosen_option, record.options[-1]
    assert chosen.items_to_extract == 0 and chosen.meets_target
    assert full.estimated_seconds > 100 * max(chosen.estimated_seconds, 1e-3)  # re-extraction is the cost
    assert record.cost.extract_seconds_per_item > 10 * record.cost.encode_seconds_per_item
    assert "skip" in record.to_markdown() and record.new_model_version == "2"


def test_stricter_target_buys_a_costlier_option_with_the_same_models(upgrade: Upgrade) -> None:
    old, new = upgrade.old, upgrade.compatible
    images, labels = upgrade.validation.native_inputs(), upgrade.validation.labels
    common = dict(
        gallery_items=GALLERY_ITEMS,
        blessed=True,
        cost=CostModel(extract_seconds_per_item=1e-3, encode_seconds_per_item=1e-6),
        old_codebooks=upgrade.codebooks["old"],
        new_codebooks=upgrade.codebooks["compatible"],
        prototypes=old.head.weight.detach().numpy(),
    )
    feats = (extract_features(old, images), extract_features(new, images), labels)
    lenient = decide_from_features(*feats, config=DecisionConfig(quality_target=0.8, **FAST), **common)
    strict = decide_from_features(*feats, config=DecisionConfig(quality_target=0.99, **FAST), **common)
    assert lenient.chosen_option.estimated_seconds < strict.chosen_option.estimated_seconds
    assert strict.mode in ("partial", "full") and strict.chosen_option.relative_quality >= 0.99


def test_incompatible_model_gets_a_full_backfill(upgrade: Upgrade) -> None:
    blessed = blessing(upgrade, upgrade.independent)
    assert not blessed
    common = dict(
        old_model=upgrade.old,
        new_model=upgrade.independent,
        validation=upgrade.validation,
        gallery_items=GALLERY_ITEMS,
        old_codebooks=upgrade.codebooks["old"],
        new_codebooks=upgrade.codebooks["independent"],
    )
    record = decide(blessed=blessed, config=DecisionConfig(quality_target=0.8, **FAST), **common)
    assert record.mode == "full" and record.fraction == 1.0
    assert "not blessed" in " ".join(record.reasons)
    # Even if someone overrode the blessing, the numbers alone rule out keeping old features:
    skip = record.options[0]
    assert skip.mode == "skip" and skip.relative_quality < 0.5
    forced = decide(blessed=True, config=DecisionConfig(quality_target=0.8, **FAST), **common)
    assert forced.mode in ("partial", "full") and forced.chosen_option.items_to_extract >= GALLERY_ITEMS // 2


def test_rows_a_transform_mapped_are_judged_as_stored_not_as_the_models_own(upgrade: Upgrade) -> None:
    # given: a live gallery in the champion's (v1's) space whose rows v3 extracted and a one-epoch
    # map h_{3→1} moved there; labelled by their lineage "3>1"
    train = upgrade.validation  # the map's quality is not the point: a rough one shows the effect
    rough = fit_transform(
        extract_features(upgrade.independent, train),
        extract_features(upgrade.old, train),
        train.labels,
        TransformConfig(epochs=1, hidden=16),
        source_model="3",
    )
    common = dict(
        old_model=upgrade.old,
        new_model=upgrade.compatible,
        validation=upgrade.validation,
        gallery_items=GALLERY_ITEMS,
        blessed=True,
        old_codebooks=upgrade.codebooks["old"],
        new_codebooks=upgrade.codebooks["compatible"],
        config=DecisionConfig(quality_target=0.8, **FAST),
        old_model_version="1",
        new_model_version="2",
    )
    mapped = LiveComposition(
        gallery_version="g", codebook_version="1", counts={"1": 10}, lineages={"3>1": 10}
    )
    # when: the decision simulates the live gallery through the lineage, or (wrongly) as v1's own
    as_stored = decide(
        composition=mapped,
        gallery_models={"3": upgrade.independent},
        lineage_maps={("3", "1"): rough},
        **common,
    )
    as_own = decide(
        composition=LiveComposition(gallery_version="g", codebook_version="1", counts={"1": 10}), **common
    )
    # then: the rough map shows in the live quality the options must beat
    assert as_stored.live_quality["map"] < as_own.live_quality["map"] - 0.05
    with pytest.raises(DecisionError, match="mapped from v3 into v1"):
        decide(composition=mapped, gallery_models={"3": upgrade.independent}, **common)
