"""Data loading: bundled digits, manifests, image folders, the procedural generator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hotswap.components.data.bundled import InMemorySource, in_memory_set, load_mnist5k, make_synthetic
from hotswap.components.data.images import DataError
from hotswap.components.data.loading import model_inputs
from hotswap.components.data.objects import manifest_from_frame, read_image_folder, read_image_manifest
from hotswap.components.data.preprocess import Preprocessing, builtin_preprocessing
from PIL import Image


def test_mnist5k_split_is_stratified_and_seeded(mnist):
    inputs = mnist.native_inputs()
    assert inputs.shape == (5000, 1, 28, 28) and inputs.dtype == np.float32
    assert inputs.min() >= 0.0 and inputs.max() <= 1.0 and inputs.max() > 0.5
    assert mnist.source.image_shape() == (28, 28, 1) and mnist.class_names == tuple(str(i) for i in range(10))
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
    assert data.native_inputs().shape == (1200, 1, 16, 16)
    assert data.source.pixels.dtype == np.uint8 and data.source.image_shape() == (16, 16, 1)
    assert data.num_classes == 120 and (np.bincount(data.labels) == 10).all()
    again = make_synthetic(1200, 120, 16, seed=3)
    assert (again.native_inputs() == data.native_inputs()).all() and again.version == data.version
    assert (again.splits == data.splits).all() and (again.labels == data.labels).all()
    other = make_synthetic(1200, 120, 16, seed=4)
    assert (other.native_inputs() != data.native_inputs()).any() and other.version != data.version


def test_in_memory_views_are_computed_once_per_preprocessing(monkeypatch):
    data = make_synthetic(50, 5, image_size=16, seed=0)
    source = data.source
    assert isinstance(source, InMemorySource)
    calls = []
    real_call = Preprocessing.__call__

    def counting(self, image, where="image"):
        calls.append(self.key)
        return real_call(self, image, where)

    monkeypatch.setattr(Preprocessing, "__call__", counting)
    native = builtin_preprocessing(16)
    first = source.views(native)
    assert first.shape == (50, 1, 16, 16) and calls == []  # native size: one vectorised pass
    assert source.views(builtin_preprocessing(16)) is first  # an equal preprocessing: the same view
    np.testing.assert_allclose(first, data.native_inputs())
    resized = Preprocessing(image_size=24, channels="RGB", mean=(0.5,), std=(0.25,))
    view = source.views(resized)
    assert view.shape == (50, 3, 24, 24) and len(calls) == 50  # one transform per row, once
    assert source.views(resized) is view and source.views(native) is first and len(calls) == 50
    np.testing.assert_array_equal(view[7], real_call(resized, source.image(7)))
    # model inputs of a subset are rows of the cached view, read nothing again
    inputs = model_inputs(data.subset([7, 3]), resized)
    np.testing.assert_array_equal(inputs, view[[7, 3]])
    assert len(calls) == 50


def test_in_memory_version_follows_the_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 10, 10, 1), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 2, 2])
    base = in_memory_set(images, labels).version
    assert in_memory_set(images.copy(), labels).version == base  # same content, another array
    changed = images.copy()
    changed[4, 5, 5, 0] ^= 1  # one pixel of one image
    assert in_memory_set(changed, labels).version != base
    assert in_memory_set(images, np.array([0, 0, 1, 1, 2, 1])).version != base  # a label


def _write_pngs(root, per_class=5, classes=("cat", "dog"), channels=1, size=20, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if channels == 1 else (size, size, channels)
            pixels = (rng.random(shape) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_becomes_a_dataset(tmp_path):
    _write_pngs(tmp_path)
    data = read_image_folder(tmp_path)
    assert len(data) == 10 and data.source.image_shape() == (20, 20, 1)
    assert data.class_names == ("cat", "dog")
    assert sorted(np.bincount(data.labels).tolist()) == [5, 5]
    assert set(data.splits) <= {"train", "val", "test"} and data.labelled
    inputs = model_inputs(data, builtin_preprocessing(28))  # a model reading 28x28 resizes
    assert inputs.shape == (10, 1, 28, 28) and inputs.min() >= 0.0 and inputs.max() <= 1.0
    native = model_inputs(data, builtin_preprocessing(20))
    np.testing.assert_allclose(native[3, 0], data.decoded(3)[:, :, 0] / 255.0, atol=1e-6)
    with pytest.raises(DataError, match="not held in memory"):
        data.native_inputs()


def test_an_rgb_image_folder_keeps_its_three_channels(tmp_path):
    _write_pngs(tmp_path, per_class=3, channels=3, size=12)
    data = read_image_folder(tmp_path)
    assert data.source.image_shape() == (12, 12, 3) and data.decoded(0).shape == (12, 12, 3)
    rgb = model_inputs(data, builtin_preprocessing(12, 3))
    assert rgb.shape == (6, 3, 12, 12)
    np.testing.assert_allclose(rgb[0], data.decoded(0).transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert not np.allclose(rgb[:, 0], rgb[:, 1])  # real colour, not a grey copied three times
    assert model_inputs(data, builtin_preprocessing(12, 1)).shape == (6, 1, 12, 12)  # a gray model


def test_image_folder_version_changes_with_an_images_content_only(tmp_path):
    _write_pngs(tmp_path, per_class=3)
    first = read_image_folder(tmp_path).version
    assert read_image_folder(tmp_path).version == first  # read again, nothing changed
    target = tmp_path / "dog" / "1.png"
    original = target.read_bytes()
    target.write_bytes(original)  # rewritten with the same bytes
    assert read_image_folder(tmp_path).version == first
    Image.fromarray(np.full((20, 20), 7, dtype=np.uint8)).save(target)
    changed = read_image_folder(tmp_path).version
    assert changed != first
    # another image of exactly the same byte size (uncompressed PNGs of one shape) is a change too
    Image.fromarray(np.full((20, 20), 7, dtype=np.uint8)).save(target, compress_level=0)
    stored = target.read_bytes()
    Image.fromarray(np.full((20, 20), 8, dtype=np.uint8)).save(target, compress_level=0)
    assert len(target.read_bytes()) == len(stored) and target.read_bytes() != stored
    same_size = read_image_folder(tmp_path).version
    target.write_bytes(stored)
    assert same_size != read_image_folder(tmp_path).version
    target.write_bytes(original)
    assert read_image_folder(tmp_path).version == first  # the content, not the history, decides


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
    versions = set()
    for name in ("m.parquet", "m.csv"):
        path = tmp_path / name
        frame.to_parquet(path) if name.endswith("parquet") else frame.to_csv(path, index=False)
        data = read_image_manifest(path)
        assert data.item_ids.tolist() == ["a", "b", "c", "d"] and data.labels.tolist() == [0, 0, 1, 1]
        assert data.class_names == ("cat", "dog") and data.splits.tolist() == frame["split"].tolist()
        assert data.split("test").item_ids.tolist() == ["b", "d"]
        assert model_inputs(data, builtin_preprocessing(20)).shape == (4, 1, 20, 20)
        versions.add(data.version)
    assert len(versions) == 1  # the same rows and objects, whatever the file format


def test_manifest_missing_columns_is_named(tmp_path):
    path = tmp_path / "m.csv"
    _manifest(tmp_path).drop(columns=["label"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) \['label'\]"):
        read_image_manifest(path)


def test_manifest_duplicate_ids_are_named(tmp_path):
    frame = _manifest(tmp_path, item_id=["a", "b", "a", "d"])
    with pytest.raises(DataError, match=r"^shop\.csv: duplicate item_id\(s\) \['a'\]"):
        manifest_from_frame(frame, "shop.csv", base_dir=tmp_path)


def test_manifest_unknown_labels_are_named(tmp_path):
    frame = _manifest(tmp_path, label=["cat", "cat", "dog", "bird"])
    with pytest.raises(DataError, match=r"^shop\.csv: unknown label\(s\) \['bird'\]"):
        manifest_from_frame(frame, "shop.csv", base_dir=tmp_path, class_names=["cat", "dog"])


def test_manifest_unknown_split_is_named(tmp_path):
    frame = _manifest(tmp_path, split=["train", "test", "holdout", "test"])
    with pytest.raises(DataError, match=r"^shop\.csv: unknown split value\(s\) \['holdout'\]"):
        manifest_from_frame(frame, "shop.csv", base_dir=tmp_path)


def test_unreadable_image_is_named(tmp_path):
    frame = _manifest(tmp_path)
    (tmp_path / "dog" / "0.png").write_bytes(b"this is not a png")
    data = manifest_from_frame(frame, "shop.csv", base_dir=tmp_path)
    with pytest.raises(DataError, match=r"^shop\.csv: item 'c' \(dog/0\.png\): unreadable image"):
        model_inputs(data, builtin_preprocessing(20))


def test_missing_image_file_is_named(tmp_path):
    frame = _manifest(tmp_path, uri=["cat/0.png", "cat/1.png", "dog/0.png", "dog/9.png"])
    data = manifest_from_frame(frame, "shop.csv", base_dir=tmp_path)
    with pytest.raises(DataError, match=r"^shop\.csv: item 'd' \(dog/9\.png\): cannot be read"):
        model_inputs(data, builtin_preprocessing(20))
    with pytest.raises(DataError, match=r"1 object\(s\) do not exist, e\.g\. shop\.csv: item 'd' \(dog/9"):
        _ = data.version


def test_damaged_manifest_file_is_a_clear_error(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"m\.parquet: cannot be parsed"):
        read_image_manifest(path)


def test_an_object_source_keeps_decoded_images_for_repeated_passes_of_one_run(tmp_path):
    """A refresh reads its rows many times; with a cache a small set is read from the store once,
    forgotten when the next flow run starts, and never shipped to DataLoader workers."""

    from hotswap.components.data.loading import LoaderConfig, model_inputs
    from hotswap.components.data.objects import ObjectReader, read_image_folder
    from hotswap.components.data.preprocess import Preprocessing
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )

    class CountingReader(ObjectReader):
        reads = 0

        def read(self, uri, base_dir="."):
            CountingReader.reads += 1
            return super().read(uri, base_dir)

    items = read_image_folder(tmp_path, reader=CountingReader())
    pp, config = Preprocessing(image_size=8, channels="RGB"), LoaderConfig(batch_size=4, workers=0)
    first = model_inputs(items, pp, config)
    assert CountingReader.reads == 10  # no cache: every pass reads
    model_inputs(items, pp, config)
    assert CountingReader.reads == 20
    items.source.keep_decoded(1 << 20)
    model_inputs(items, pp, config)
    again = model_inputs(items, pp, config)
    assert CountingReader.reads == 30 and np.array_equal(first, again)  # read once, then kept
    assert items.source.__getstate__()["_cache"] == {}  # what a worker receives holds no copy
    items.source.forget_decoded()
    model_inputs(items, pp, config)
    assert CountingReader.reads == 40
    items.source.keep_decoded(3 * 8 * 8 * 3)  # a budget of three images keeps three
    items.source.forget_decoded()
    model_inputs(items, pp, config)
    model_inputs(items, pp, config)
    assert CountingReader.reads == 40 + 10 + 7
