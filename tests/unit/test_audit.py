"""Multi-version audit: AC/AM on hand-built matrices, and the triangle filled from real models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hotswap.components.compat.audit import METRICS, AuditResult, audit_models
from hotswap.components.models.backbones import BackboneSpec, build_model


def _result(grid: list[list[float]]) -> AuditResult:
    versions = [str(i + 1) for i in range(len(grid))]
    frame = pd.DataFrame(np.array(grid, dtype=float), index=versions, columns=versions)
    return AuditResult(matrices={m: frame for m in METRICS}, versions=versions)


def test_ac_counts_pairs_where_the_newer_query_beats_the_gallery_models_self_test():
    nan = float("nan")
    result = _result([[0.5, nan, nan], [0.6, 0.7, nan], [0.4, 0.8, 0.9]])
    # pairs (2,1): 0.6 > 0.5 yes; (3,1): 0.4 > 0.5 no; (3,2): 0.8 > 0.7 yes
    assert result.ac() == pytest.approx(2 / 3)
    assert result.am() == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.4, 0.8, 0.9]))


def test_audit_fills_the_lower_triangle_and_renders(mnist):
    data = mnist.split("val").subset(np.arange(120))
    models = {
        str(v): build_model(BackboneSpec(arch=arch, embedding_dim=8, num_classes=10), seed=v)
        for v, arch in ((1, "small"), (2, "large"), (3, "small"))
    }
    result = audit_models(models, data)
    top1 = result.matrices["top1"].to_numpy()
    assert np.isfinite(top1[np.tril_indices(3)]).all()
    assert np.isnan(top1[np.triu_indices(3, k=1)]).all()
    assert len(result.long_table()) == 6
    markdown = result.to_markdown()
    assert "query v3" in markdown and "gallery v1" in markdown and "AC" in markdown


def test_audit_versions_sort_numerically():
    models = {
        v: build_model(BackboneSpec(arch="small", embedding_dim=4, num_classes=2), seed=1)
        for v in ("10", "9")
    }
    data_images = np.zeros((4, 1, 28, 28), dtype=np.float32)
    from hotswap.components.data.bundled import in_memory_set

    data = in_memory_set(
        data_images, np.array([0, 0, 1, 1]), np.array(list("abcd")), np.array(["val"] * 4), ("a", "b")
    )
    assert audit_models(models, data).versions == ["9", "10"]
