"""Multi-version audit: how compatible is every registered model with every earlier one?

C[i][j] = M(query model i, gallery model j) for j ≤ i on one held-out split (leave-one-out, the
query's own item excluded from the other model's gallery). Two summary numbers from the
continual-compatibility literature:

- AC (achieved compatibility): the share of pairs i > j with C[i][j] > C[j][j], i.e. upgrading
  the query model to i helps against gallery j instead of hurting it;
- AM (average multi-model accuracy): the mean of the filled (lower-triangular) entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.data.images import ImageSet
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.models.training import extract_features

METRICS = ("map", "top1", "top5")


@dataclass(frozen=True)
class AuditResult:
    """One lower-triangular matrix per metric (rows: query version, columns: gallery version)."""

    matrices: dict[str, pd.DataFrame]
    versions: list[str]

    def ac(self, metric: str = "top1") -> float:
        c = self.matrices[metric].to_numpy()
        pairs = [(i, j) for i in range(len(c)) for j in range(i)]
        if not pairs:
            return float("nan")
        return float(np.mean([c[i, j] > c[j, j] for i, j in pairs]))

    def am(self, metric: str = "top1") -> float:
        values = self.matrices[metric].to_numpy()
        return float(np.nanmean(values[np.tril_indices(len(values))]))

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "metric": list(METRICS),
                "AC": [self.ac(m) for m in METRICS],
                "AM": [self.am(m) for m in METRICS],
            }
        )

    def long_table(self) -> pd.DataFrame:
        """One row per filled pair: query version, gallery version, every metric."""
        rows = []
        for i, query in enumerate(self.versions):
            for j, gallery in enumerate(self.versions[: i + 1]):
                row = {"query": query, "gallery": gallery}
                row.update({m: float(self.matrices[m].iloc[i, j]) for m in METRICS})
                rows.append(row)
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        parts = ["# Compatibility audit", "", f"Versions (oldest first): {', '.join(self.versions)}", ""]
        parts += ["## Summary", "", self.summary().to_markdown(index=False, floatfmt=".3f"), ""]
        for metric in METRICS:
            frame = self.matrices[metric].copy()
            frame.index = [f"query v{v}" for v in frame.index]
            frame.columns = [f"gallery v{v}" for v in frame.columns]
            parts += [f"## {metric}", "", frame.to_markdown(floatfmt=".3f"), ""]
        return "\n".join(parts)


def audit_models(models: Mapping[str, EmbeddingModel], data: ImageSet, device: str = "cpu") -> AuditResult:
    """Score every (newer query model, older gallery model) pair, oldest version first."""
    if not models:
        raise ValueError("an audit needs at least one model version")
    feats = {v: extract_features(models[v], data, device=device) for v in models}
    return audit_features(feats, data.labels)


def audit_features(feats: Mapping[str, np.ndarray], labels: np.ndarray) -> AuditResult:
    """The audit from each version's features of the same held-out items (e.g. streamed ones)."""
    if not feats:
        raise ValueError("an audit needs at least one model version")
    versions = sorted(feats, key=lambda v: int(v) if str(v).isdigit() else str(v))
    dims = {v: feats[v].shape[1] for v in versions}
    n = len(versions)
    grids = {m: np.full((n, n), np.nan) for m in METRICS}
    for i, query in enumerate(versions):
        for j, gallery in enumerate(versions[: i + 1]):
            if dims[query] != dims[gallery]:
                continue  # incomparable spaces stay empty rather than failing the whole audit
            result = retrieval_metrics(feats[query], labels, feats[gallery], labels, exclude_self=True)
            for metric, value in result.as_dict().items():
                if metric in grids:
                    grids[metric][i, j] = value
    matrices = {m: pd.DataFrame(g, index=versions, columns=versions) for m, g in grids.items()}
    return AuditResult(matrices=matrices, versions=versions)
