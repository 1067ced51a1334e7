"""The pydantic configs of the heavy components, kept apart so settings load without torch.

Why: every ``hotswap`` command validates its settings first, and a settings error must cost
about as much as ``--help``. The knobs of compatible training, the compatibility search, DPQ
and the backfill decision are plain pydantic models; defined beside their algorithms they
pulled torch and faiss into every settings load. They live here and are re-exported by
components/compat/dual_tuning.py, compat_search.py, quantization.py and decision.py, so callers
import them from either place.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Similarity = Literal["cosine", "l2"]
Metric = Literal["map", "top1", "top5"]
Ordering = Literal["random", "uncertainty", "transform_uncertainty"]
UncertaintyScore = Literal["margin", "max_similarity", "entropy"]
DEFAULT_SCORE: UncertaintyScore = "entropy"
CalibrationRule = Literal["identity", "impostor", "two_point", "logistic"]
DEFAULT_RULE: CalibrationRule = "logistic"


class CalibrationConfig(BaseModel):
    """How calibrations are fitted (every knob with its documented default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="calibrate mixed galleries; False ranks raw scores")
    rule: CalibrationRule = Field(DEFAULT_RULE, description="how each segment's affine map is fitted")
    max_pairs: int = Field(
        2_000_000, ge=1000, description="cap on query × item pairs per segment (query rows are sampled)"
    )
    ridge: float = Field(1e-3, ge=0, description="logistic rule only: ridge on the standardised slope")
    seed: int = Field(0, description="seed of the query-row sample when max_pairs caps it")


Method = Literal["independent", "l2", "bct", "dual_tuning"]
ProtoVariant = Literal["softmax", "triplet"]
DUAL_TUNING_TERMS = ("proto", "n2o", "o2n")


class CompatConfig(BaseModel):
    """Which compatible-training method to run and how hard each loss term pulls.

    Weights multiply the named terms; a weight of 0 removes a term (that is how the ablations
    are expressed). Only the weights of the chosen ``method`` are used: ``proto``/``n2o``/``o2n``
    for Dual-Tuning, ``l2_weight`` for L2 and ``bct_weight`` for BCT.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "dual_tuning"
    ce_weight: float = Field(1.0, ge=0, description="label-smoothed CE of the new head")
    proto_weight: float = Field(8.0, ge=0, description="old-prototype transfer (feature level)")
    n2o_weight: float = Field(0.2, ge=0, description="new features through the frozen old classifier")
    o2n_weight: float = Field(1.0, ge=0, description="old features through the new classifier")
    l2_weight: float = Field(4.0, ge=0, description="L2 baseline: ‖φ_n − φ_o‖² per sample")
    bct_weight: float = Field(1.0, ge=0, description="BCT baseline: influence loss with synthesised rows")
    proto_variant: ProtoVariant = "triplet"
    proto_scale: float = Field(
        24.0, gt=0, description="s in CE(s·⟨f, p_k⟩) (softmax variant): inverse temperature"
    )
    proto_normalize: bool = Field(
        True, description="unit-normalise prototypes (cosine logits); False keeps raw class means"
    )
    margin: float = Field(0.15, ge=0, description="margin m of the prototype-triplet variant")
    targets: Literal["live", "champion"] = Field(
        "live",
        description="which frozen models a refresh regularises towards: 'live' = the champion plus "
        "every model version holding at least target_min_share of the live gallery, weighted by "
        "its share; 'champion' = the champion alone (the single-old-model behaviour)",
    )
    target_min_share: float = Field(
        0.1, gt=0, le=1, description="share of live gallery items a model version needs to become a target"
    )
    champion_floor_weight: float = Field(
        0.25,
        ge=0,
        le=1,
        description="the champion's weight never falls below this, even when few live items are its own",
    )
    anchor_weight: float = Field(
        0.0,
        ge=0,
        description="instance anchor: ‖φ_n(x) − sg[φ_o(x)]‖² per sample (0 = off; see training_epochs)",
    )
    ract_weight: float = Field(
        0.0,
        ge=0,
        description="RACT-style contrast (Zhang et al., ICLR 2022): the new-to-old positive must beat "
        "new-to-old *and new-to-new* negatives of other classes, against regression in mixed galleries "
        "(0 = off; ablated in docs/benchmarks.md)",
    )
    ract_temperature: float = Field(0.01, gt=0, description="τ of the RACT contrast (RACT's config: 0.01)")
    simplex_head: bool = Field(
        False,
        description="a fixed d-simplex classifier (stationary representations, CVPR 2024) for the first "
        "model and every challenger: a class keeps its vertex over the chain; at most d + 1 classes",
    )
    target_age_decay: float = Field(
        1.0,
        gt=0,
        description="target weights by share and age: w_v ∝ π_v·γ^age, age = how many live versions are "
        "newer than v (the champion has age 0); 1 = by share alone, < 1 favours recent versions",
    )
    min_epoch_steps: int = Field(
        44,
        ge=0,
        description="an epoch counts as at least this many optimiser steps: with fewer items per "
        "epoch the trainer runs ceil(epochs x min_epoch_steps / steps per epoch) epochs; 0 = off",
    )

    def training_epochs(self, train_items: int, batch_size: int, epochs: int) -> int:
        """Epochs that give at least ``epochs × min_epoch_steps`` optimiser steps.

        Why: the prototype and O2N terms need a number of *steps* to pull the new space onto the
        old one, not a number of passes over the data. On a small data set the configured epochs
        leave them unconverged (scikit-learn's digits, 1,078 training images: 17 steps per epoch,
        136 in 8 epochs, and new/old stays below old/old), while MNIST-5k's 3,000 training items
        (47 steps per epoch at batch 64) keep their configured epochs: the default of 44 is the
        largest that leaves that protocol unchanged. Scaling with the configured epochs keeps
        short test and smoke runs short.
        """
        steps_per_epoch = max(1, math.ceil(train_items / batch_size))
        return max(epochs, math.ceil(epochs * self.min_epoch_steps / steps_per_epoch))

    def without(self, term: str) -> CompatConfig:
        """The same config with one Dual-Tuning term switched off (for ablations)."""
        if term not in DUAL_TUNING_TERMS:
            raise ValueError(f"unknown Dual-Tuning term {term!r}; expected one of {DUAL_TUNING_TERMS}")
        return self.model_copy(update={f"{term}_weight": 0.0})


Split = Literal["train", "val", "test"]
SEARCHED_KNOBS = ("proto_weight", "margin", "o2n_weight", "anchor_weight", "min_epoch_steps")


class CompatSearchConfig(BaseModel):
    """How far the refresh may search when the configured compatibility weights fail the gate.

    The space is a grid of values per knob (the product, without the configured config itself);
    ``strategy`` says in which order candidates are tried, ``max_trials`` and ``max_seconds``
    bound the search. Trials run ``parallel`` at a time (one mapped wave).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="search when the configured weights are not blessed")
    max_trials: int = Field(6, ge=0, description="at most this many candidate trainings")
    max_seconds: float = Field(1800.0, gt=0, description="no new trial starts after this many seconds")
    parallel: int = Field(2, ge=1, description="trials per wave (mapped Prefect tasks run together)")
    strategy: Literal["nearest", "random", "grid"] = Field(
        "nearest",
        description="nearest: fewest knobs changed from the configured config first (seeded order "
        "within); random: seeded shuffle of the grid; grid: the product in order",
    )
    seed: int = Field(0, description="seed of the random order")
    stop_on_pass: bool = Field(True, description="stop after the first wave with a passing trial")
    selection_split: Split = Field("val", description="the split trials are scored and selected on")
    gate_split: Split | None = Field(
        None,
        description="the split the gate judges the selected model on; None = the data settings' "
        "gate split where set, else 'test'. Must differ from selection_split",
    )
    proto_weight: list[float] = Field(default_factory=lambda: [8.0, 16.0, 32.0])
    margin: list[float] = Field(default_factory=lambda: [0.15, 0.3])
    o2n_weight: list[float] = Field(default_factory=lambda: [1.0, 2.0])
    anchor_weight: list[float] = Field(default_factory=lambda: [0.0, 1.0])
    min_epoch_steps: list[int] = Field(default_factory=lambda: [44, 88])

    @model_validator(mode="after")
    def _check(self) -> CompatSearchConfig:
        for knob in SEARCHED_KNOBS:
            values = getattr(self, knob)
            if not values:
                raise ValueError(f"compat_search.{knob}: give at least one value")
            if any(v < 0 for v in values):
                raise ValueError(f"compat_search.{knob}: values must be >= 0, got {values}")
        if self.gate_split is not None and self.gate_split == self.selection_split:
            raise ValueError(
                f"compat_search.gate_split {self.gate_split!r} equals selection_split: the gate must "
                "judge on data the selection never saw"
            )
        return self

    def resolve_gate_split(self, data_gate_split: str | None = None) -> str:
        """The split the gate judges a searched model on (never the selection split)."""
        split = self.gate_split or data_gate_split or "test"
        if split == self.selection_split:
            split = "test" if self.selection_split != "test" else "val"
        return split


class DPQConfig(BaseModel):
    """Every knob of DPQ training.

    Defaults were chosen on the *validation* split (MNIST-5k old-model features, a random
    projection of MNIST pixels, a 100-class synthetic set; bench/quant.py --split val):
    - ``similarity="l2"`` with progressive k-means init: cosine argmax is not the nearest
      codeword, and random init leaves codewords dead;
    - ``gamma=100`` *relative to the block's residual energy* (see :func:`quantize`): with a
      raw γ the soft term dragged the small later-block codewords off the data on
      well-clustered features (raw γ = 1000 raised held-out 32-bit error by ~7 %);
    - ``lr=3e-4``, 10 epochs of 512, ``label_weight=1``: the label term lifts 8/16-bit label
      mAP; a gentler rate (1e-4) kept 32-bit recall ~0.01 higher but lost most of that lift.
    """

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    n_blocks: int = Field(4, ge=1, description="M: codebooks (blocks); code length = M·log2 K bits")
    n_codewords: int = Field(256, ge=2, le=65536, description="K: codewords per block, a power of two")
    gamma: float = Field(
        100.0, gt=0, description="softmax temperature γ; for 'l2' relative to the block's residual energy"
    )
    similarity: Similarity = Field("l2", description="'l2' (−‖r−c‖²) or 'cosine' (the paper code)")
    mu: float = Field(1.0, ge=0, description="weight of the hard-prefix distortion")
    nu: float = Field(0.1, ge=0, description="weight of the soft/hard joint term ‖X̃_M − X̂_M‖²")
    label_weight: float = Field(1.0, ge=0, description="λ of the label-guided term (0 = unsupervised)")
    classifier_scale: float = Field(16.0, gt=0, description="logit scale of a cosine head built here")
    init: Literal["kmeans", "random"] = "kmeans"
    kmeans_iters: int = Field(4, ge=1, description="k-means iterations per progressive-dimension step")
    reseed_dead: bool = Field(True, description="re-seed codewords no training item selected in an epoch")
    epochs: int = Field(10, ge=0)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(512, ge=1)
    seed: int = 0
    device: str = "cpu"

    @field_validator("n_codewords")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"n_codewords must be a power of two (K = 2^bits), got {value}")
        return value

    @property
    def bits_per_block(self) -> int:
        return self.n_codewords.bit_length() - 1


class TransformConfig(BaseModel):
    """The feature transformation h_v (components/compat/transform.py, DESIGN.md §17): every knob.

    Defaults start from FCT/FastFill's published values and were checked on the *validation*
    split (``python -m bench.transform --sweep``: each knob varied alone, scored by mAP of
    candidate queries against the mapped, requantized MNIST-5k validation gallery). The one change
    it made: lr 5e-4 (0.847 mAP) instead of 2e-3 (0.749); λ 1 beat 0 and 0.1 there.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="offer the transform option (trained in a refresh, decided on)")
    hidden: int = Field(256, ge=8, description="width of the MLP's hidden layers (FCT: 256 → 2048)")
    blocks: int = Field(2, ge=0, description="residual Linear–BN–ReLU blocks after the input layer")
    epochs: int = Field(40, ge=1, description="passes over the training split's features")
    batch_size: int = Field(256, ge=8, description="items per step (BatchNorm needs more than one)")
    lr: float = Field(
        5e-4,
        gt=0,
        description="Adam learning rate, cosine-annealed to 0 (FCT's 5e-4; won the val sweep over 2e-3)",
    )
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay")
    ce_weight: float = Field(
        1.0, ge=0, description="λ: weight of CE(W_n h(φ_v(x)), y), FastFill's discriminative term (μ_disc 1)"
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="ε of the CE term (FastFill: 0.1)")
    uncertainty: bool = Field(
        True, description="train the per-item log-variance head s: ½·e^{−s}·ℓ + μ·s (FastFill)"
    )
    uncertainty_weight: float = Field(
        0.5, gt=0, description="μ: weight of s in the uncertainty loss (FastFill 0.5)"
    )
    freeze_bn_fraction: float = Field(
        0.5, ge=0, le=1, description="BatchNorm statistics frozen for this last share of epochs (FCT: ½)"
    )
    seed: int = Field(0, description="initialisation and batch order")


class DecisionConfig(BaseModel):
    """Every knob of the decision, with its documented default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality_target: float = Field(
        0.95, gt=0, le=1, description="an option must reach this share of full backfill's metric"
    )
    metric: Metric = Field("map", description="the metric the target applies to")
    validation_classes: Literal["gallery", "trained"] = Field(
        "gallery",
        description="which classes' validation items the options are judged on: 'gallery' = every "
        "labelled class, as the served gallery holds items of classes no model trained on yet; "
        "'trained' = only data.classes (optimistic for cheap options on an open gallery)",
    )
    quantized: bool = Field(True, description="judge options as served (DPQ codes); False = float features")
    ordering: Ordering = Field(
        "uncertainty", description="which items a partial backfill re-extracts first (won on MNIST val)"
    )
    uncertainty_score: UncertaintyScore = DEFAULT_SCORE
    partial_fractions: tuple[float, ...] | None = Field(
        None, description="candidate fractions; None = the 20 inner points of the 22-point backfill curve"
    )
    unblessed_action: Literal["full", "reject"] = Field(
        "full",
        description="what an unblessed model gets when a full backfill beats the live system: a full "
        "backfill, or no upgrade at all",
    )
    policy: Literal["auto", "full", "skip"] = Field(
        "auto",
        description="'auto' = the rules below; 'full' / 'skip' force that option whatever the numbers "
        "(baselines for benchmarks; the as-served numbers are still recorded)",
    )
    min_gain_over_live: float = Field(
        0.0,
        ge=0,
        description="an option beats the live system when its served metric exceeds live by more than this",
    )
    promotion_metrics: tuple[Metric, ...] | None = Field(
        None,
        description="metrics on which the chosen option, as served, must beat live by min_gain_over_live "
        "to be promotable (auto-promotion, and promote without --force); None = the decision's metric",
    )
    timing_sample: int = Field(256, ge=8, description="validation images timed to estimate per-item cost")
    timing_repeats: int = Field(3, ge=1, description="timing runs; the fastest is kept (least disturbed)")
    batch_size: int = Field(256, ge=1)
    overhead_seconds_per_item: float = Field(0.0, ge=0, description="I/O per written item, if known")
    seed: int = 0
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig,
        description="score calibration of mixed galleries (partial options; compat/calibration.py)",
    )
    transform: TransformConfig = Field(
        default_factory=TransformConfig,
        description="the learned feature transformation of the 'transform' option (compat/transform.py)",
    )

    @field_validator("partial_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and (not value or any(not 0 < f < 1 for f in value)):
            raise ValueError(f"partial_fractions must be non-empty and strictly between 0 and 1, got {value}")
        return value

    @field_validator("promotion_metrics")
    @classmethod
    def _promotion_metrics(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("promotion_metrics must name at least one metric, or be left unset")
        return value

    def fractions(self) -> tuple[float, ...]:
        if self.partial_fractions is not None:
            return tuple(sorted(self.partial_fractions))
        from hotswap.components.decision.ordering import backfill_fractions

        return tuple(float(f) for f in backfill_fractions()[1:-1])
