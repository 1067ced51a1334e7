"""The compatible-training objective: one batch → named, weighted loss terms over every target.

``train_model`` (components/models/training.py) calls the objective once per batch; it holds the
frozen target models with their constants and weights the loss terms of
components/compat/loss_terms.py as the configured method asks (DESIGN.md §4, §11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hotswap.components.compat.loss_terms import (
    bct_influence_loss,
    l2_loss,
    n2o_loss,
    o2n_loss,
    prototype_softmax_loss,
    prototype_triplet_loss,
    ract_loss,
)
from hotswap.components.compat.target_constants import CompatibilityError, synthesised_classifier
from hotswap.components.core.configs import CompatConfig
from hotswap.components.models.backbones import EmbeddingModel


@dataclass
class CompatTarget:
    """One frozen model the new model must stay compatible with, and how hard it pulls.

    ``class_map`` maps new head rows to this model's head rows (classes both know); None means
    the identity over the smaller head (today's assumption for a single old model). ``weight``
    multiplies every structural term of this target (w_v in DESIGN.md §11).
    """

    model: EmbeddingModel
    weight: float = 1.0
    class_map: Mapping[int, int] | None = None
    name: str = "old"


class _TargetState:
    """A target's constants: frozen model, label lookup, prototypes, synthesised classifier."""

    def __init__(
        self,
        model: EmbeddingModel,
        weight: float,
        lookup: torch.Tensor,
        prototypes: torch.Tensor | None,
        config: CompatConfig,
        name: str,
    ) -> None:
        needs_protos = config.method == "bct" or (config.method == "dual_tuning" and config.proto_weight > 0)
        if needs_protos and prototypes is None:
            raise CompatibilityError(f"method {config.method!r} needs old prototypes (target {name})")
        self.model, self.weight, self.lookup, self.prototypes, self.name = (
            model,
            weight,
            lookup,
            prototypes,
            name,
        )
        self.bct_classifier = (
            synthesised_classifier(model, prototypes, lookup) if config.method == "bct" else None
        )

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        self.lookup = self.lookup.to(device)
        if self.prototypes is not None:
            self.prototypes = self.prototypes.to(device)
        if self.bct_classifier is not None:
            self.bct_classifier = self.bct_classifier.to(device)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()  # never let a stray .train() update the old BatchNorm statistics
        with torch.no_grad():
            return self.model.embed(images)


class CompatObjective:
    """One batch → named, weighted loss terms, for ``train_model(objective=...)``.

    L = L_ce + Σ_v w_v·(λ_p L_proto(v) + λ_n2o L_n2o(v) + λ_o2n L_o2n(v)) over the frozen target
    models v (DESIGN.md §11), plus the optional anchor and RACT terms per target; each term is
    logged once, summed over the targets. With one target of weight 1 this is exactly the
    single-old-model loss. Old features are computed under ``no_grad`` in eval mode.
    """

    def __init__(
        self,
        old_model: EmbeddingModel | None,
        config: CompatConfig,
        prototypes: torch.Tensor | None = None,
        lookup: torch.Tensor | None = None,
        label_smoothing: float = 0.1,
        targets: Sequence[_TargetState] | None = None,
    ) -> None:
        self.config = config
        self.label_smoothing = label_smoothing
        if targets is None:
            if old_model is None or lookup is None:
                raise CompatibilityError(
                    "CompatObjective needs an old model and its class lookup, or targets"
                )
            targets = [_TargetState(old_model, 1.0, lookup, prototypes, config, "old")]
        if not targets:
            raise CompatibilityError("compatible training needs at least one target model")
        self.targets = list(targets)

    @property
    def old_model(self) -> EmbeddingModel:
        return self.targets[0].model

    def to(self, device: torch.device) -> CompatObjective:
        for target in self.targets:
            target.to(device)
        return self

    def _target_terms(
        self,
        model: EmbeddingModel,
        images: torch.Tensor,
        labels: torch.Tensor,
        features: torch.Tensor,
        t: _TargetState,
    ) -> dict[str, torch.Tensor]:
        cfg, w = self.config, t.weight
        terms: dict[str, torch.Tensor] = {}
        if cfg.method == "l2" and cfg.l2_weight > 0:
            terms["l2"] = cfg.l2_weight * w * l2_loss(features, t.features(images))
        elif cfg.method == "bct" and cfg.bct_weight > 0:
            scale = t.model.head.scale
            terms["bct"] = cfg.bct_weight * w * bct_influence_loss(features, labels, t.bct_classifier, scale)
        elif cfg.method == "dual_tuning":
            if cfg.proto_weight > 0:
                if cfg.proto_variant == "softmax":
                    proto = prototype_softmax_loss(
                        features, labels, t.prototypes, cfg.proto_scale, cfg.proto_normalize
                    )
                else:
                    proto = prototype_triplet_loss(
                        features, labels, t.prototypes, cfg.margin, cfg.proto_normalize
                    )
                terms["proto"] = cfg.proto_weight * w * proto
            if cfg.n2o_weight > 0:
                terms["n2o"] = cfg.n2o_weight * w * n2o_loss(features, labels, t.model, t.lookup)
            old_features = None
            if cfg.o2n_weight > 0:
                old_features = t.features(images)
                terms["o2n"] = cfg.o2n_weight * w * o2n_loss(old_features, labels, model)
            if cfg.anchor_weight > 0:
                old_features = t.features(images) if old_features is None else old_features
                terms["anchor"] = cfg.anchor_weight * w * l2_loss(features, old_features)
            if cfg.ract_weight > 0:
                old_features = t.features(images) if old_features is None else old_features
                ract = ract_loss(features, old_features, labels, cfg.ract_temperature)
                terms["ract"] = cfg.ract_weight * w * ract
        return terms

    def __call__(
        self, model: EmbeddingModel, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        features, logits = model(images)
        terms = {"ce": cfg.ce_weight * F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
        for target in self.targets:
            for name, value in self._target_terms(model, images, labels, features, target).items():
                terms[name] = terms[name] + value if name in terms else value
        return terms
