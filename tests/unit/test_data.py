"""Data loading: bundled digits, manifests, image folders, the procedural generator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hotswap.components.data import (
    DataError,
    load_image_folder,
    load_manifest_images,
    load_mnist5k,
    make_synthetic,
    read_manifest,
)
from PIL import Image


def test_mnist5k_split_is_stratified_and_seeded(mnist):
    assert mnist.images.shape == (5000, 1, 28, 28)
    assert mnist.images.min() >= 0.0 and mnist.images.max() <= 1.0
    for split, per_class in {"train": 300, "val": 100, "test": 100}.items():
        counts = np.bincount(mnist.split(split).labels, minlength=10)
        assert (counts == per_class).all(), split
    again = load_mnist5k(seed=0)
    assert (again.splits == mnist.splits).all() and again.version == mnist.version
    other = load_mnist5k(seed=1)
    assert (other.splits != mnist.splits).any() and other.version != mnist.version


def test_class_subset_keeps_global_label_numbers(mnist):
    old = mnist.split("train").with_classes(range(5))
    assert set(old.labels.tolist()) == {0, 1, 2, 3, 4}
    assert len(old) == 1500


def test_synthetic_generator_scales_to_many_classes():
    data = make_synthetic(n_items=1200, n_classes=120, image_size=16, seed=3)
    assert data.images.shape == (1200, 1, 16, 16)
    assert data.num_classes == 120 and (np.bincount(data.labels) == 10).all()
    assert (make_synthetic(1200, 120, 16, seed=3).images == data.images).all()


def _write_pngs(root, per_class=5, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((20, 20)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_becomes_a_dataset(tmp_path):
    _write_pngs(tmp_path)
    data = load_image_folder(tmp_path, image_size=28)
    assert data.images.shape == (10, 1, 28, 28)
    assert data.class_names == ("cat", "dog")
    assert sorted(np.bincount(data.labels).tolist()) == [5, 5]


def _manifest(tmp_path, **changes) -> pd.DataFrame:
    _write_pngs(tmp_path, per_class=2)
    frame = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "uri": ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"],
            "label": ["cat", "cat", "dog", "dog"],
            "split": ["train", "test", "train", "test"],
        }
    )
    for column, values in changes.items():
        frame[column] = values
    return frame


def test_manifest_round_trips_through_parquet_and_csv(tmp_path):
    frame = _manifest(tmp_path)
    for name in ("m.parquet", "m.csv"):
        path = tmp_path / name
        frame.to_parquet(path) if name.endswith("parquet") else frame.to_csv(path, index=False)
        loaded = read_manifest(path)
        data = load_manifest_images(loaded, base_dir=tmp_path, name=name)
        assert data.item_ids.tolist() == ["a", "b", "c", "d"] and data.labels.tolist() == [0, 0, 1, 1]


def test_manifest_missing_columns_is_named(tmp_path):
    path = tmp_path / "m.csv"
    _manifest(tmp_path).drop(columns=["label"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) \['label'\]"):
        read_manifest(path)


def test_manifest_duplicate_ids_are_named(tmp_path):
    frame = _manifest(tmp_path, item_id=["a", "b", "a", "d"])
    with pytest.raises(DataError, match=r"duplicate item_id\(s\) \['a'\]"):
        load_manifest_images(frame, base_dir=tmp_path)


def test_manifest_unknown_labels_are_named(tmp_path):
    frame = _manifest(tmp_path, label=["cat", "cat", "dog", "bird"])
    with pytest.raises(DataError, match=r"unknown label\(s\) \['bird'\]"):
        load_manifest_images(frame, base_dir=tmp_path, classes=["cat", "dog"])


def test_manifest_unknown_split_is_named(tmp_path):
    frame = _manifest(tmp_path, split=["train", "test", "holdout", "test"])
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['holdout'\]"):
        load_manifest_images(frame, base_dir=tmp_path)


def test_unreadable_image_is_named(tmp_path):
    frame = _manifest(tmp_path)
    (tmp_path / "dog" / "0.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"item 'c' \(dog/0\.png\): unreadable image"):
        load_manifest_images(frame, base_dir=tmp_path)


def test_missing_image_file_is_named(tmp_path):
    frame = _manifest(tmp_path, uri=["cat/0.png", "cat/1.png", "dog/0.png", "dog/9.png"])
    with pytest.raises(DataError, match=r"item 'd' \(dog/9\.png\): cannot be read"):
        load_manifest_images(frame, base_dir=tmp_path)


def test_damaged_manifest_file_is_a_clear_error(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"m\.parquet: cannot be parsed"):
        read_manifest(path)
