"""The skip-or-backfill decision: estimate every option's quality and cost, pick the cheapest good one.

DESIGN.md §7. Options, cheapest first:

- ``skip``: new-model queries search the gallery as it is (old features, old DPQ codes);
- ``requantize``: the stored old features re-encoded with the new codebooks (no forward pass);
- ``partial(f)``: the first f of the gallery in the configured ordering re-extracted with the new
  model, everything re-encoded with the new codebooks (a mixed gallery);
- ``full``: every item re-extracted and re-encoded.
- ``transform`` (when maps h_v were trained, components/compat/transform.py): every kept item's
  stored feature mapped into the new space by its provenance model's map and re-encoded (no
  image read); transform(f) re-extracts the f the maps are least sure of and maps the rest.

The decision, from validation data to a stored record, is put together here from its parts:
components/decision/quality.py (each option's quality as served), components/decision/costs.py (measured
seconds per item), components/decision/policy.py (the table of options and the rules that choose one),
components/decision/record.py (what is recorded), components/decision/promotability.py (whether the
chosen option may go live by itself), components/decision/report.py (its markdown and plot)
and components/decision/storage.py (where it is kept).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from hotswap.components.compat.served import assign_gallery_models, compose_gallery
from hotswap.components.compat.transform import FeatureTransform
from hotswap.components.compat.transform import apply as apply_transform
from hotswap.components.core.configs import DecisionConfig
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import model_inputs
from hotswap.components.decision.costs import measure_costs
from hotswap.components.decision.policy import build_options, choose
from hotswap.components.decision.promotability import with_promotability
from hotswap.components.decision.quality import estimate_quality
from hotswap.components.decision.record import CostModel, DecisionError, DecisionRecord
from hotswap.components.gallery.provenance import extracted_by, feature_space, lineage_hops
from hotswap.components.lifecycle.live import LiveComposition
from hotswap.components.models.backbones import EmbeddingModel, require_same_dim
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks


def decide_from_features(
    old_features: np.ndarray,
    new_features: np.ndarray,
    labels: np.ndarray,
    *,
    gallery_items: int,
    blessed: bool,
    cost: CostModel,
    old_codebooks: DPQCodebooks | None = None,
    new_codebooks: DPQCodebooks | None = None,
    prototypes: np.ndarray | None = None,
    config: DecisionConfig | None = None,
    versions: dict[str, str | None] | None = None,
    live_query_features: np.ndarray | None = None,
    gallery_models: np.ndarray | None = None,
    live_shares: dict[str, float] | None = None,
    better: bool | None = None,
    transformed_features: np.ndarray | None = None,
    transform_scores: np.ndarray | None = None,
) -> DecisionRecord:
    """The decision from precomputed validation features and a cost model (pure; no models).

    With ``live_query_features`` (the champion's features of the same items) options are judged
    against the live system; ``old_features`` may then be a composed gallery (``gallery_models``).
    ``transformed_features`` (the same gallery, non-candidate rows mapped by their h_v) and
    ``transform_scores`` (their predicted log-variance) add the transform options.
    """
    config = config or DecisionConfig()
    if gallery_items < 1:
        raise DecisionError(f"gallery_items must be at least 1, got {gallery_items}")
    quality = estimate_quality(
        old_features,
        new_features,
        labels,
        old_codebooks=old_codebooks,
        new_codebooks=new_codebooks,
        prototypes=prototypes,
        config=config,
        live_query_features=live_query_features,
        gallery_models=gallery_models,
        transformed_features=transformed_features,
        transform_scores=transform_scores,
    )
    options, reference = build_options(quality, cost, gallery_items, blessed, config)
    live = quality.live if config.quantized else quality.float_live
    chosen, fraction, reasons = choose(
        options, blessed, config, None if live is None else live[config.metric], better
    )
    record = DecisionRecord(
        mode=chosen,
        fraction=fraction,
        blessed=blessed,
        config=config,
        reference_quality=reference,
        gallery_items=gallery_items,
        options=options,
        reasons=reasons,
        cost=cost,
        curve=quality.curve,
        live_quality=quality.live,
        float_live_quality=quality.float_live,
        live_shares=live_shares,
        better_than_champion=better,
        **(versions or {}),
    )
    return with_promotability(record)


def decide(
    *,
    old_model: EmbeddingModel,
    new_model: EmbeddingModel,
    validation: ImageSet,
    gallery_items: int,
    blessed: bool,
    old_codebooks: DPQCodebooks | None = None,
    new_codebooks: DPQCodebooks | None = None,
    config: DecisionConfig | None = None,
    device: str = "cpu",
    old_model_version: str | None = None,
    new_model_version: str | None = None,
    old_codebook_version: str | None = None,
    new_codebook_version: str | None = None,
    source_gallery_version: str | None = None,
    composition: LiveComposition | None = None,
    gallery_models: dict[str, EmbeddingModel] | None = None,
    better: bool | None = None,
    transforms: Mapping[str, FeatureTransform] | None = None,
    lineage_maps: Mapping[tuple[str, str], FeatureTransform] | None = None,
) -> DecisionRecord:
    """Embed the validation split with both models, measure costs, and decide (see module doc).

    ``blessed`` is the compatibility report's verdict (downstream steps never recompute it);
    ``gallery_items`` is the size of the live gallery the costs scale to. With the live gallery's
    ``composition`` (and a loaded model for each of its versions other than the champion in
    ``gallery_models``) the old gallery is composed like the live one and options are judged
    against the live system. ``better`` is whether the gate's new_model checks passed.
    ``transforms`` (h_v per gallery model version, trained for this candidate) add the transform
    options when they cover every model version of the (composed) gallery but the candidate.
    Rows an earlier transform mapped (``composition.lineages``) are simulated as they are stored:
    their extracting model's features through each map of their lineage (``lineage_maps`` per
    (from, into) hop; ``gallery_models`` holds the extracting models), never as the features of
    the model they were mapped into.
    """
    config = config or DecisionConfig()
    require_same_dim(old_model, new_model)
    if len(validation) < 2:
        raise DecisionError(f"{validation.name}: the decision needs validation items, got {len(validation)}")
    old_feats = extract_features(old_model, validation, batch_size=config.batch_size, device=device)
    new_feats = extract_features(new_model, validation, batch_size=config.batch_size, device=device)
    champion_feats = gallery_feats = assignment = None
    per_model = {str(old_model_version): old_feats}
    if composition is not None:
        champion_feats = old_feats
        assignment = assign_gallery_models(validation.labels, composition.lineage_shares, seed=config.seed)
        extracted = {str(old_model_version): old_feats, str(new_model_version): new_feats}
        for label in sorted(set(assignment.tolist()) - {str(old_model_version)}):
            source = extracted_by(label)
            if source not in extracted:
                if not gallery_models or source not in gallery_models:
                    raise DecisionError(
                        f"the live gallery holds items of v{source}, but no model v{source} was given"
                    )
                extracted[source] = extract_features(
                    gallery_models[source], validation, batch_size=config.batch_size, device=device
                )
            per_model[label] = _through_lineage(label, extracted[source], lineage_maps or {})
        gallery_feats = compose_gallery(per_model, assignment)
    mapped = _mapped_gallery(
        per_model,
        np.full(len(validation), str(old_model_version)) if assignment is None else assignment,
        str(new_model_version),
        transforms,
    )
    sample = np.random.default_rng(config.seed).permutation(len(validation))[: config.timing_sample]
    cost = measure_costs(
        new_model,
        new_codebooks,
        model_inputs(validation.subset(np.sort(sample)), new_model.preprocessing),
        batch_size=config.batch_size,
        device=device,
        repeats=config.timing_repeats,
        overhead_seconds_per_item=config.overhead_seconds_per_item,
    )
    if mapped is not None:
        cost = cost.model_copy(update={"transform_seconds_per_item": mapped[2]})
    return decide_from_features(
        old_feats if gallery_feats is None else gallery_feats,
        new_feats,
        validation.labels,
        gallery_items=gallery_items,
        blessed=blessed,
        cost=cost,
        old_codebooks=old_codebooks,
        new_codebooks=new_codebooks,
        prototypes=old_model.head.weight.detach().cpu().numpy(),
        config=config,
        versions={
            "old_model_version": old_model_version,
            "new_model_version": new_model_version,
            "old_codebook_version": old_codebook_version,
            "new_codebook_version": new_codebook_version,
            "source_gallery_version": source_gallery_version,
        },
        live_query_features=champion_feats,
        gallery_models=assignment,
        live_shares=None if composition is None else composition.shares,
        better=better,
        transformed_features=None if mapped is None else mapped[0],
        transform_scores=None if mapped is None else mapped[1],
    )


def _through_lineage(
    label: str, features: np.ndarray, maps: Mapping[tuple[str, str], FeatureTransform]
) -> np.ndarray:
    """A row's features as stored: its extracting model's, through every map of its lineage."""
    for hop in lineage_hops(label):
        if hop not in maps:
            raise DecisionError(
                f"the live gallery holds rows mapped from v{hop[0]} into v{hop[1]}, but no such map was given"
            )
        features = apply_transform(maps[hop], features)[0]
    return features


def _mapped_gallery(
    per_model: Mapping[str, np.ndarray],
    assignment: np.ndarray,
    candidate: str,
    transforms: Mapping[str, FeatureTransform] | None,
) -> tuple[np.ndarray, np.ndarray | None, float] | None:
    """The composed gallery with every non-candidate row mapped by its model's h_v, the rows'
    log-variance (−inf for the candidate's own rows: never re-extracted first), and the measured
    seconds per mapped item; None when a model of the gallery has no map."""
    if not transforms:
        return None
    labels = sorted(set(assignment.tolist()) - {candidate})
    if any(feature_space(label) not in transforms for label in labels):
        return None
    mapped = compose_gallery(per_model, assignment)
    scores: np.ndarray | None = np.full(len(assignment), -np.inf)
    seconds, count = 0.0, 0
    for label in labels:  # a row is mapped from the space it is stored in (its label's last model)
        rows = assignment == label
        start = time.perf_counter()
        mapped[rows], s = apply_transform(transforms[feature_space(label)], per_model[label][rows])
        seconds += time.perf_counter() - start
        count += int(rows.sum())
        if s is None:
            scores = None
        elif scores is not None:
            scores[rows] = s
    return mapped, scores, seconds / max(count, 1)
