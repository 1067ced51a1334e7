"""Streaming from moto's S3: dataset versions, bad objects, gallery add/remove, peak memory, a .pt2
teacher. All images are real JPEG objects read over HTTP (tests/fixtures/images.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hotswap.components.compat.dual_tuning import train_compatible
from hotswap.components.core.configs import CompatConfig
from hotswap.components.data.classes import to_head_labels
from hotswap.components.data.images import DataError
from hotswap.components.data.loading import LoaderConfig, SourceItemSource, embed
from hotswap.components.data.objects import ObjectReader, decode_uint8, manifest_from_frame
from hotswap.components.gallery.backfill import run_backfill
from hotswap.components.gallery.imports import sync_gallery, write_feature_version
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.provenance import feature_models
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.lifecycle.adopt import fit_cosine_head
from hotswap.components.models.model_loading import load_team_model
from hotswap.components.models.model_spec import ModelSpec, build_user_model
from hotswap.components.models.training import TrainConfig
from hotswap.components.quant.dpq import DPQCodebooks

from tests.fixtures.images import S3ImageSet
from tests.fixtures.s3 import create_bucket, s3_client
from tests.fixtures.user_models import resnet

D = 16
OLD = dict(
    arch="tests.fixtures.user_models:resnet",
    kwargs={"widths": [8, 16], "out_dim": D},
    projection=False,
    embedding_dim=D,
    image_size=24,
    channels="RGB",
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
)


def _codebooks(d: int = D, seed: int = 0) -> DPQCodebooks:
    return DPQCodebooks(np.random.default_rng(seed).normal(0, 0.3, size=(2, 16, d)).astype(np.float32))


def _features(model, frame: pd.DataFrame, data: dict[str, bytes]) -> np.ndarray:
    """'The team's' features, computed from the bytes it once stored (no store reads)."""
    p = model.preprocessing
    x = torch.from_numpy(np.stack([p(decode_uint8(data[i])) for i in frame["item_id"]]))
    with torch.no_grad():
        return model.embed(x).numpy()


def test_manifest_version_lists_objects_and_names_a_missing_one(s3_images: S3ImageSet) -> None:
    reader = ObjectReader(s3_images.endpoint)
    training = manifest_from_frame(s3_images.training(), "train.parquet", reader=reader)
    first = training.version
    assert training.version == first
    relabelled = s3_images.training().assign(label=lambda f: f["label"].where(f.index != 3, "c9"))
    assert manifest_from_frame(relabelled, reader=reader).version != first
    # a different object behind the same URI changes the version (its ETag), without reading pixels
    bucket = create_bucket(s3_images.endpoint, "mutable")
    client = s3_client(s3_images.endpoint)
    rows = s3_images.gallery(3).assign(uri=lambda f: [f"s3://{bucket}/g/{i}.jpg" for i in f["item_id"]])
    for item in rows["item_id"]:
        client.put_object(Bucket=bucket, Key=f"g/{item}.jpg", Body=s3_images.data[item])
    small = manifest_from_frame(rows, "g", require_labels=False, require_splits=False, reader=reader)
    before = small.version
    client.put_object(Bucket=bucket, Key=f"g/{rows['item_id'][1]}.jpg", Body=s3_images.data["img-00000"])
    assert small.version != before
    client.delete_object(Bucket=bucket, Key=f"g/{rows['item_id'][2]}.jpg")
    with pytest.raises(DataError, match=f"item '{rows['item_id'][2]}' ") as err:
        _ = small.version  # the property lists the objects
    assert "\n" not in str(err.value)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_missing_or_corrupt_object_fails_naming_the_item_and_changes_nothing(
    s3_images: S3ImageSet, tmp_path: Path
) -> None:
    reader = ObjectReader(s3_images.endpoint)
    rows = s3_images.gallery(40)
    bucket = create_bucket(s3_images.endpoint, "broken")
    client = s3_client(s3_images.endpoint)
    for n, item in enumerate(rows["item_id"]):
        if n != 25:  # item 25 is not written: missing
            client.put_object(Bucket=bucket, Key=f"g/{item}.jpg", Body=s3_images.data[item])
    uris = [f"s3://{bucket}/g/{item}.jpg" for item in rows["item_id"]]
    gallery = manifest_from_frame(
        rows.assign(uri=uris), "gallery.parquet", require_labels=False, require_splits=False, reader=reader
    )
    model = build_user_model(ModelSpec(**OLD, num_classes=3), seed=0)
    galleries = GalleryStore(LocalObjectStore(tmp_path / "store"))
    ids = gallery.item_ids
    feats = np.eye(D, dtype=np.float32)[np.arange(len(ids)) % D]
    write_feature_version(
        galleries,
        "g",
        ids,
        feats,
        _codebooks(),
        model_version="1",
        codebook_version="1",
        version="v1",
        shard_size=8,
        publish=True,
    )
    before = _tree(tmp_path / "store")
    source = SourceItemSource(gallery, model.preprocessing, LoaderConfig(batch_size=8, workers=2))
    missing, corrupt = rows["item_id"][25], rows["item_id"][31]
    for bad, why in ((missing, "NoSuchKey"), (corrupt, "unreadable image")):
        if bad == corrupt:  # now 25 exists, and 31 holds bytes that are no image
            client.put_object(Bucket=bucket, Key=f"g/{missing}.jpg", Body=s3_images.data[missing])
            client.put_object(Bucket=bucket, Key=f"g/{corrupt}.jpg", Body=b"\xff\xd8 truncated jpeg")
        with pytest.raises(DataError, match=rf"item '{bad}' \(s3://{bucket}/g/{bad}.jpg\).*{why}") as err:
            run_backfill(
                galleries,
                "g",
                "v1",
                "full",
                model,
                _codebooks(),
                source,
                model_version="2",
                version=f"v2-{n_attempt(bad, missing)}",
                shard_size=8,
                workers=1,
            )
        assert "\n" not in str(err.value)  # one line
        assert galleries.read_current("g") == "v1"
        assert galleries.list_versions("g") == ["v1"]  # the attempt never became a version
        after = _tree(tmp_path / "store")
        assert {k: v for k, v in after.items() if "/v2-" not in k} == before  # nothing stored changed


def n_attempt(bad: str, missing: str) -> str:
    return "missing" if bad == missing else "corrupt"


def test_gallery_add_and_remove_without_a_backfill(s3_images: S3ImageSet, tmp_path: Path) -> None:
    class CountingReader(ObjectReader):
        reads: list[str] = []

        def read(self, uri: str, base_dir: str = ".") -> bytes:
            CountingReader.reads.append(uri)
            return super().read(uri, base_dir)

    model = build_user_model(ModelSpec(**OLD, num_classes=3), seed=1).eval()
    first = s3_images.gallery(120)
    galleries = GalleryStore(LocalObjectStore(tmp_path / "store"))
    features = _features(model, first, s3_images.data)
    books = _codebooks()
    write_feature_version(
        galleries,
        "g",
        first["item_id"].to_numpy(),
        features,
        books,
        model_version="1",
        codebook_version="1",
        version="v1",
        shard_size=50,
        publish=True,
    )
    removed = set(first["item_id"][:20])
    added = s3_images.gallery(150)[120:]
    wanted = pd.concat([first[~first["item_id"].isin(removed)], added])
    reader = CountingReader(s3_images.endpoint)
    manifest, counts = sync_gallery(
        galleries,
        "g",
        "v1",
        manifest_from_frame(wanted, "g2", require_labels=False, require_splits=False, reader=reader),
        model,
        books,
        model_version="1",
        version="v2",
        shard_size=50,
        loader=LoaderConfig(batch_size=16, workers=0),
        publish=True,
    )
    assert counts == {"kept": 100, "added": 30, "removed": 20}
    assert sorted(CountingReader.reads) == sorted(added["uri"])  # only the new images were read
    arrays = galleries.load_arrays("g", "v2")
    ids = arrays.ids.astype(str)
    assert not set(ids) & removed and set(added["item_id"]) <= set(ids) and len(ids) == 130
    by_id = dict(zip(first["item_id"], features, strict=True))
    kept = [i for i, item in enumerate(ids) if item in by_id]
    np.testing.assert_array_equal(arrays.features[kept], np.stack([by_id[ids[i]] for i in kept]))
    new_rows = [i for i, item in enumerate(ids) if item in set(added["item_id"])]
    np.testing.assert_allclose(arrays.features[new_rows], _features(model, added, s3_images.data), atol=1e-5)
    assert galleries.read_current("g") == "v2" and manifest.parent_version == "v1"
    assert set(feature_models(galleries, "g", "v2")) == {"1"}


def test_full_backfill_streams_with_bounded_peak_memory(s3_images: S3ImageSet, tmp_path: Path) -> None:
    """Peak traced allocations of a full backfill over 400 S3 images (64×64 RGB: 19.7 MB as one array)
    stay below a bound that holding every decoded image trips, measured in a fresh process."""
    frame = s3_images.gallery(400)
    frame.to_parquet(tmp_path / "gallery.parquet")
    (tmp_path / "local").mkdir()
    for item in frame["item_id"]:
        (tmp_path / "local" / f"{item}.jpg").write_bytes(s3_images.data[item])
    spec = {**OLD, "image_size": 64, "num_classes": 3}
    args = {
        "manifest": str(tmp_path / "gallery.parquet"),
        "spec": spec,
        "endpoint": s3_images.endpoint,
        "store": str(tmp_path / "store"),
        "local": str(tmp_path / "local"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.backfill_memory_probe", json.dumps(args)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    print("backfill peak traced bytes", peaks)
    all_images = len(frame) * 3 * 64 * 64 * 4
    bound = all_images // 2
    assert peaks["in_memory"] > bound, peaks  # the measurement sees a held image set...
    assert peaks["streamed"] < bound, peaks  # ...and the streamed backfill stays well below it
    gallery = GalleryStore(LocalObjectStore(tmp_path / "store" / "streamed"))
    assert gallery.load_manifest("g", "v2").num_items == len(frame)


def test_an_exported_old_model_is_the_frozen_teacher(s3_images: S3ImageSet, tmp_path: Path) -> None:
    trunk = resnet(widths=[8, 16], out_dim=D).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(trunk, (torch.rand(2, 3, 24, 24),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "team.pt2")
    reader = ObjectReader(s3_images.endpoint)
    manifest = manifest_from_frame(s3_images.training(), "train.parquet", reader=reader)
    train = manifest.split("train").subset(np.arange(96))
    spec = ModelSpec(
        **{**OLD, "format": "export", "arch": "team.pt2", "kwargs": {}},
        num_classes=manifest.num_classes,
        class_names=manifest.class_names,
    )
    old = load_team_model(spec, tmp_path / "team.pt2")
    loader = LoaderConfig(batch_size=32, workers=2)
    (feats,) = embed([old], train, loader)
    old.head.weight.data.copy_(fit_cosine_head(feats, train.labels, manifest.num_classes))
    before = {k: v.clone() for k, v in old.state_dict().items()}
    new_spec = ModelSpec(
        arch="tests.fixtures.user_models:convnet",
        kwargs={"in_channels": 1, "width": 8},
        embedding_dim=D,
        num_classes=manifest.num_classes,
        image_size=32,
        channels="L",
    )
    new = build_user_model(new_spec, seed=0)
    trained, history = train_compatible(
        old,
        new,
        to_head_labels(train, list(manifest.class_names)),
        CompatConfig(min_epoch_steps=0),  # one epoch: the test is about who reads what, not convergence
        TrainConfig(epochs=1, batch_size=32),
        loader=loader,
    )
    assert trained is new and len(history.epochs) == 1
    assert {"ce", "proto", "n2o", "o2n"} <= set(history.final)
    assert all(torch.equal(before[k], v) for k, v in old.state_dict().items())  # the teacher never moved
    (again,) = embed([old], train, loader)
    np.testing.assert_allclose(again, feats, atol=1e-6)
    new_feats, old_feats = embed([new, old], train, loader)
    assert new_feats.shape == old_feats.shape == (96, D)
    assert json.loads(new.to_files()["spec.json"])["image_size"] == 32
