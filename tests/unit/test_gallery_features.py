"""Importing a deployed system's gallery features, and the old classifier fitted for adopt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hotswap.components.data.images import DataError
from hotswap.components.lifecycle.adopt import fit_cosine_head, read_gallery_features


def _features(n: int = 30, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) * 3.0


def test_parquet_list_column_numeric_columns_and_npy_read_the_same(tmp_path: Path) -> None:
    feats = _features()
    ids = [f"sku-{i}" for i in range(len(feats))]
    pd.DataFrame({"item_id": ids, "embedding": list(feats)}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"item_id": ids, **{f"f{j}": feats[:, j] for j in range(8)}}).to_parquet(
        tmp_path / "b.parquet"
    )
    np.save(tmp_path / "c.npy", feats)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    expected = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for got in (
        read_gallery_features(tmp_path / "a.parquet", embedding_dim=8),
        read_gallery_features(tmp_path / "b.parquet"),
        read_gallery_features(tmp_path / "c.npy", tmp_path / "ids.txt"),
    ):
        assert list(got.ids) == ids and got.labels is None
        np.testing.assert_allclose(got.features, expected, rtol=1e-6)  # unit-normalised on import
        assert got.renormalised > 1  # the stored features were not unit-norm, and the report says so


def test_bad_gallery_features_are_named(tmp_path: Path) -> None:
    feats = _features(4)
    pd.DataFrame({"item_id": ["a", "b", "b", "c"], "feature": list(feats)}).to_parquet(
        tmp_path / "dup.parquet"
    )
    with pytest.raises(DataError, match=r"duplicate item id\(s\) \['b'\]"):
        read_gallery_features(tmp_path / "dup.parquet")
    pd.DataFrame({"item_id": list("abcd"), "feature": list(feats)}).to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(DataError, match="d=8, the model embeds into d=16"):
        read_gallery_features(tmp_path / "ok.parquet", embedding_dim=16)
    feats[2, 1] = np.nan
    pd.DataFrame({"item_id": list("abcd"), "feature": list(feats)}).to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(DataError, match=r"non-finite features for item\(s\) \['c'\]"):
        read_gallery_features(tmp_path / "nan.parquet")
    np.save(tmp_path / "x.npy", _features(4))
    with pytest.raises(DataError, match="needs an ids file"):
        read_gallery_features(tmp_path / "x.npy")
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="3 ids for a feature matrix of shape"):
        read_gallery_features(tmp_path / "x.npy", tmp_path / "ids.txt")


def test_fitted_old_head_separates_frozen_features_better_than_class_means() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16))
    labels = np.repeat(np.arange(5), 40)
    feats = (centres[labels] + rng.normal(scale=1.6, size=(200, 16))).astype(np.float32)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    means = np.stack([unit[labels == k].mean(0) for k in range(5)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    head = fit_cosine_head(feats, labels, 5).numpy()
    np.testing.assert_allclose(np.linalg.norm(head, axis=1), 1.0, rtol=1e-5)

    def loss(w: np.ndarray) -> float:
        logits = 16 * unit @ w.T
        logits -= logits.max(1, keepdims=True)
        return float(-(logits[np.arange(200), labels] - np.log(np.exp(logits).sum(1))).mean())

    assert loss(head) < loss(means)  # refined beyond its initialisation
    assert (np.argmax(unit @ head.T, axis=1) == labels).mean() >= 0.8
