"""The live gallery as it is: which model versions embedded its items, and who to stay compatible with.

After a skip or a partial backfill the live gallery holds features of several model versions (the
per-item provenance written by components/gallery/provenance.py). A refresh reads that composition (share
π_v of items per model version v, and the gallery's codebook version) and derives:

- the compatibility *targets* T = {champion} ∪ {v : π_v ≥ min_share}, with weights w_v ∝ π_v
  (normalised over T; the champion keeps at least a floor weight) — DESIGN.md §11;
- the shares the as-served validation gallery is composed in (components/compat/served.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from hotswap.components.gallery.provenance import feature_models, feature_space
from hotswap.components.gallery.versions import GalleryStore
from pydantic import BaseModel, ConfigDict, Field


class LiveComposition(BaseModel):
    """Items per model version in one gallery version, and the codebooks its codes come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gallery_version: str
    codebook_version: str | None = Field(description="the codebooks the live codes were encoded with")
    counts: dict[str, int] = Field(
        description="gallery items per model version whose feature space they are in (mapped rows "
        "count as the version they were mapped into)"
    )
    lineages: dict[str, int] = Field(
        default_factory=dict,
        description="items per provenance label where a transform mapped some ('1>3': extracted by v1, "
        "mapped into v3); empty when every row is its model's own extraction",
    )

    @property
    def items(self) -> int:
        return sum(self.counts.values())

    @property
    def shares(self) -> dict[str, float]:
        """π_v: share of items per model version (sums to 1)."""
        total = max(self.items, 1)
        return {version: count / total for version, count in sorted(self.counts.items())}

    @property
    def lineage_shares(self) -> dict[str, float]:
        """Shares per provenance label, lineage kept: what the decision simulates as served."""
        if not self.lineages:
            return self.shares
        total = max(sum(self.lineages.values()), 1)
        return {label: count / total for label, count in sorted(self.lineages.items())}


def read_composition(galleries: GalleryStore, gallery: str, version: str) -> LiveComposition:
    """The composition of a stored gallery version, from its checksummed provenance."""
    manifest = galleries.load_manifest(gallery, version)
    labels = Counter(str(m) for m in feature_models(galleries, gallery, version).tolist())
    counts: Counter[str] = Counter()
    for label, count in labels.items():
        counts[feature_space(label)] += count
    mapped = any(label != feature_space(label) for label in labels)
    return LiveComposition(
        gallery_version=version,
        codebook_version=manifest.codebook_version or manifest.model_version,
        counts=dict(sorted(counts.items())),
        lineages=dict(sorted(labels.items())) if mapped else {},
    )


class TargetWeight(BaseModel):
    """One compatibility target of a refresh: a model version, its live share and its loss weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    share: float = Field(ge=0, le=1, description="π_v: share of live gallery items it embedded")
    weight: float = Field(ge=0, le=1, description="w_v: multiplies its structural loss terms")
    champion: bool = False


def compatibility_targets(
    composition: LiveComposition | None,
    champion: str,
    *,
    mode: Literal["live", "champion"] = "live",
    min_share: float = 0.1,
    champion_floor: float = 0.25,
    age_decay: float = 1.0,
) -> list[TargetWeight]:
    """T = {champion} ∪ {v : π_v ≥ min_share}; weights ∝ π_v·γ^age over T, champion ≥ floor; sum 1.

    ``mode='champion'`` (or no composition) gives the champion alone with weight 1, the
    single-old-model behaviour. The champion comes first, the others by version. ``age_decay``
    γ weighs a version by how many targets are newer than it (the champion counts as newest):
    γ = 1 (the default) weighs by share alone, γ < 1 lets older versions pull less.
    """
    champion = str(champion)
    shares = composition.shares if composition is not None else {}
    if mode == "champion" or not shares:
        return [TargetWeight(version=champion, share=shares.get(champion, 1.0), weight=1.0, champion=True)]
    others = {v: s for v, s in shares.items() if v != champion and s >= min_share}
    if not others:
        return [TargetWeight(version=champion, share=shares.get(champion, 0.0), weight=1.0, champion=True)]
    newest_first = sorted(others, key=_version_key, reverse=True)
    aged = {v: others[v] * age_decay ** (1 + newest_first.index(v)) for v in others}
    champion_share = shares.get(champion, 0.0)
    champion_weight = max(champion_share / (champion_share + sum(aged.values())), champion_floor)
    rest = sum(aged.values())
    targets = [TargetWeight(version=champion, share=champion_share, weight=champion_weight, champion=True)]
    targets += [
        TargetWeight(version=v, share=others[v], weight=(1.0 - champion_weight) * aged[v] / rest)
        for v in sorted(others, key=_version_key)
    ]
    return targets


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
