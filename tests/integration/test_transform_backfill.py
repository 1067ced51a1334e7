"""A transform backfill through the real gallery build: no image read, maps stored with the version.

A local store holds a mixed gallery (two model versions after a partial backfill); a transform
backfill for a third model maps each row by its provenance model's h_v. Models are small and
untrained (the build does not care what the weights mean), images tiny procedural ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.compat.transform import TransformConfig, apply, fit_transform
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import SourceItemSource
from hotswap.components.gallery.backfill import build_gallery_version, run_backfill
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.provenance import feature_models, feature_spaces
from hotswap.components.gallery.records import ShardCorruptedError
from hotswap.components.gallery.shard_jobs import BackfillError
from hotswap.components.gallery.transforms import read_transforms
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.lifecycle.live import read_composition
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks

GALLERY, N_ITEMS, SHARD, DIM = "shop", 96, 16, 8


@pytest.fixture(scope="module")
def data() -> ImageSet:
    return make_synthetic(N_ITEMS, n_classes=4, image_size=16, seed=3)


def model(seed: int) -> EmbeddingModel:
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=4, image_size=16)
    return build_model(spec, seed=seed).eval()


def codebooks(seed: int) -> DPQCodebooks:
    rng = np.random.default_rng(seed)
    return DPQCodebooks((rng.standard_normal((2, 16, DIM)) * 0.3).astype(np.float32))


def mixed_gallery(tmp_path, data: ImageSet) -> GalleryStore:
    """v1: every item by m1; v2: half of them re-extracted by m2 (a mixed live gallery)."""
    galleries = GalleryStore(LocalObjectStore(tmp_path / "store", fsync=False))
    source = SourceItemSource(data, model(1).preprocessing)
    build_gallery_version(
        galleries, GALLERY, model(1), codebooks(1), source, data.item_ids, model_version="m1",
        codebook_version="c1", version="v1", shard_size=SHARD, workers=1, publish=True,
    )  # fmt: skip
    run_backfill(
        galleries, GALLERY, "v1", "partial", model(2), codebooks(2), source, fraction=0.5, ordering="random",
        model_version="m2", codebook_version="c2", version="v2", workers=1, publish=True,
    )  # fmt: skip
    return galleries


def test_given_a_mixed_gallery_when_transform_backfilled_then_no_image_is_read_and_maps_round_trip(
    tmp_path, data: ImageSet
) -> None:
    galleries = mixed_gallery(tmp_path, data)
    images = data.native_inputs()
    target = extract_features(model(3), images)
    config = TransformConfig(epochs=3, hidden=16)
    maps = {
        v: fit_transform(extract_features(model(seed), images), target, data.labels, config, source_model=v)
        for v, seed in (("m1", 1), ("m2", 2))
    }
    source = SourceItemSource(data, model(3).preprocessing)

    manifest = run_backfill(
        galleries, GALLERY, "v2", "transform", model(3), codebooks(3), source, model_version="m3",
        codebook_version="c3", version="v3", workers=2, transforms=maps,
    )  # fmt: skip

    assert source.reads == 0  # no item read, so no backbone ran
    before = galleries.load_arrays(GALLERY, "v2")
    after = galleries.load_arrays(GALLERY, "v3")
    provenance = feature_models(galleries, GALLERY, "v2")
    for v in ("m1", "m2"):
        rows = provenance == v
        np.testing.assert_allclose(after.features[rows], apply(maps[v], before.features[rows])[0], atol=1e-6)
    np.testing.assert_array_equal(after.codes, codebooks(3).encode(after.features))
    # mapped rows keep their lineage: in m3's space, but not m3's own extraction
    labels = feature_models(galleries, GALLERY, "v3")
    np.testing.assert_array_equal(labels, np.char.add(provenance.astype(str), ">m3"))
    assert set(feature_spaces(galleries, GALLERY, "v3")) == {"m3"}
    assert manifest.metadata["backfill"]["mapped"] == {v: int((provenance == v).sum()) for v in ("m1", "m2")}
    assert set(manifest.metadata["transforms"]) == {"m1", "m2"}

    stored = read_transforms(galleries, galleries.load_manifest(GALLERY, "v3"))
    for v, transform in maps.items():
        np.testing.assert_array_equal(
            apply(stored[v], before.features)[0], apply(transform, before.features)[0]
        )

    key = galleries.version_key(
        GALLERY, "v3", manifest.metadata["transforms"]["m1"]["transform.json"]["path"]
    )
    galleries.store.put_bytes(key, galleries.store.get_bytes(key) + b" ")
    with pytest.raises(ShardCorruptedError, match="checksum"):
        read_transforms(galleries, galleries.load_manifest(GALLERY, "v3"))


def test_given_mapped_rows_when_transformed_again_then_the_lineage_grows_and_the_space_is_mapped(
    tmp_path, data: ImageSet
) -> None:
    # given: v3 = the mixed gallery mapped into m3 (rows labelled m1>m3 and m2>m3)
    galleries = mixed_gallery(tmp_path, data)
    images = data.native_inputs()
    config = TransformConfig(epochs=1, hidden=16)
    into_m3 = {
        v: fit_transform(extract_features(model(seed), images), extract_features(model(3), images),
                         data.labels, config, source_model=v)
        for v, seed in (("m1", 1), ("m2", 2))
    }  # fmt: skip
    run_backfill(
        galleries, GALLERY, "v2", "transform", None, codebooks(3), None, model_version="m3",
        version="v3", workers=1, transforms=into_m3,
    )  # fmt: skip
    # when: a later model maps v3 again; it has a map from m3's space only
    into_m4 = {"m3": fit_transform(extract_features(model(3), images), extract_features(model(4), images),
                                   data.labels, config, source_model="m3")}  # fmt: skip
    manifest = run_backfill(
        galleries, GALLERY, "v3", "transform", None, codebooks(4), None, model_version="m4",
        version="v4", workers=1, transforms=into_m4,
    )  # fmt: skip
    # then: every row was mapped from m3's space, and its label records both maps
    assert manifest.metadata["backfill"]["mapped"] == {"m3": N_ITEMS}
    before = feature_models(galleries, GALLERY, "v3")
    np.testing.assert_array_equal(feature_models(galleries, GALLERY, "v4"), np.char.add(before, ">m4"))
    composition = read_composition(galleries, GALLERY, "v4")
    assert composition.counts == {"m4": N_ITEMS}  # targets and calibration see the space
    assert set(composition.lineages) == {"m1>m3>m4", "m2>m3>m4"}  # the decision sees the lineage
    assert sum(composition.lineage_shares.values()) == pytest.approx(1.0)


def test_given_a_gallery_model_without_a_map_when_transform_backfilled_then_refused(tmp_path, data) -> None:
    galleries = mixed_gallery(tmp_path, data)
    images = data.native_inputs()
    only_m1 = {"m1": fit_transform(extract_features(model(1), images), extract_features(model(3), images),
                                   data.labels, TransformConfig(epochs=1, hidden=16))}  # fmt: skip
    with pytest.raises(BackfillError, match=r"\['m2'\]"):
        run_backfill(
            galleries, GALLERY, "v2", "transform", None, codebooks(3), None, model_version="m3",
            version="v3", workers=1, transforms=only_m1,
        )  # fmt: skip
