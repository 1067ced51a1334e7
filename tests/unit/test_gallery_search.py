"""Calibrated search over stored galleries: sub-index merge = exact brute force; per-query-model storage.

Real parts throughout: two (untrained, differently seeded) backbones embed procedural images, real
DPQ codebooks (k-means initialised) encode them, the backfill engine writes a bootstrap and a
partial version (so the version is really mixed, with provenance), faiss serves the codes, and the
calibration round-trips through the version on the local store and on moto's S3 server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hotswap.components.compat.calibration import AffineMap, ScoreCalibration
from hotswap.components.core.configs import DPQConfig
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import SourceItemSource
from hotswap.components.gallery.backfill import build_gallery_version, run_backfill
from hotswap.components.gallery.calibration import (
    CalibrationMissingError,
    calibration_file,
    calibration_for,
    ensure_calibration,
    fit_for_gallery,
    list_calibrations,
    load_calibration,
    write_calibration,
)
from hotswap.components.gallery.provenance import feature_models
from hotswap.components.gallery.records import ShardCorruptedError, VersionImmutableError
from hotswap.components.gallery.search import GallerySearcher
from hotswap.components.gallery.store import ObjectStore
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_training import train_dpq
from hotswap.components.quant.index import build_flat_index, index_to_bytes

GALLERY = "shop"
DIM = 16


@dataclass
class World:
    data: ImageSet
    gallery: ImageSet
    validation: ImageSet
    models: dict[str, EmbeddingModel]
    books: DPQCodebooks


@pytest.fixture(scope="module")
def world() -> World:
    data = make_synthetic(300, n_classes=5, seed=0)
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=5)
    models = {"1": build_model(spec, seed=1).eval(), "2": build_model(spec, seed=2).eval()}
    gallery = data.split("train")
    books = train_dpq(
        extract_features(models["2"], gallery), config=DPQConfig(n_blocks=2, n_codewords=16, epochs=0)
    )
    return World(data, gallery, data.split("val"), models, books)


def index_builder(books: DPQCodebooks):
    def build(codes: np.ndarray, ids: np.ndarray) -> bytes:
        return index_to_bytes(build_flat_index(books.codebooks, codes, np.arange(len(ids), dtype=np.int64)))

    return build


def mixed_version(
    world: World, store: ObjectStore, calibration: ScoreCalibration | None = None
) -> GalleryStore:
    """v1: every item by model 1; v2-partial: 40 % re-extracted by model 2; both coded with one codebook."""
    galleries = GalleryStore(store)
    assert world.models["1"].preprocessing == world.models["2"].preprocessing
    source = SourceItemSource(world.data, world.models["2"].preprocessing)
    build_gallery_version(
        galleries, GALLERY, world.models["1"], world.books, source, world.gallery.item_ids,
        model_version="1", codebook_version="c", version="v1", shard_size=64,
        index_builder=index_builder(world.books), publish=True, workers=1,
    )  # fmt: skip
    run_backfill(
        galleries, GALLERY, "v1", "partial", world.models["2"], world.books, source, fraction=0.4,
        ordering="random", model_version="2", codebook_version="c", version="v2-partial",
        index_builder=index_builder(world.books), workers=1, calibration=calibration,
    )  # fmt: skip
    return galleries


def fitted(world: World, query: str = "2") -> ScoreCalibration:
    return fit_for_gallery(query, world.models, world.validation, world.books)


def brute_force(
    world: World, galleries: GalleryStore, version: str, queries: np.ndarray, cal: ScoreCalibration
):
    """Exact calibrated scores of every query against every item (decoded codes, no faiss)."""
    arrays = galleries.load_arrays(GALLERY, version)
    scores = queries @ world.books.decode(arrays.codes).T
    return cal.adjust(scores.astype(np.float32), feature_models(galleries, GALLERY, version)), arrays.ids


def test_sub_index_merge_equals_exact_calibrated_brute_force(world: World, tmp_path) -> None:
    from hotswap.components.gallery.local_store import LocalObjectStore

    cal = fitted(world)
    assert not cal.is_identity
    galleries = mixed_version(world, LocalObjectStore(tmp_path / "store", fsync=False), cal)
    searcher = GallerySearcher.from_version(galleries, GALLERY, "v2-partial", "2")
    assert searcher.mixed and searcher.calibration_source == "stored" and searcher.calibration == cal
    queries = extract_features(world.models["2"], world.data.split("test").subset(np.arange(20)))
    k = 15
    scores, ids = searcher.search(queries, k)
    assert scores.shape == ids.shape == (20, k) and ids.dtype.kind == "U"
    exact, item_ids = brute_force(world, galleries, "v2-partial", queries, cal)
    exact_top = -np.sort(-exact, axis=1)[:, :k]
    np.testing.assert_allclose(scores, exact_top, rtol=1e-5, atol=1e-5)
    # every returned id is a distinct item whose exact calibrated score is the one returned
    row_of = {item: row for row, item in enumerate(item_ids.astype(str))}
    for q in range(len(queries)):
        rows = [row_of[i] for i in ids[q]]
        assert len(set(rows)) == k
        np.testing.assert_allclose(exact[q, rows], scores[q], rtol=1e-5, atol=1e-5)
    # the calibration changes the answer: raw scores rank differently on this mixed gallery
    raw = GallerySearcher.from_version(
        galleries, GALLERY, "v2-partial", "2", calibration=ScoreCalibration.identity("2", ["1", "2"])
    )
    assert (raw.search(queries, k)[1] != ids).any()
    # k beyond the gallery returns every item once
    everything = searcher.search(queries[:2], 10_000)[1]
    assert everything.shape == (2, len(item_ids)) and len(set(everything[0])) == len(item_ids)


def test_calibration_round_trips_through_the_stored_version(world: World, any_store: ObjectStore) -> None:
    cal = fitted(world)
    galleries = mixed_version(world, any_store, cal)
    assert list_calibrations(galleries, GALLERY, "v2-partial") == ["2"]
    assert load_calibration(galleries, GALLERY, "v2-partial", "2") == cal
    assert calibration_for(galleries, GALLERY, "v2-partial", "2") == (cal, "stored")
    # single-model versions need none: identity, whatever the query model
    single, how = calibration_for(galleries, GALLERY, "v1", "2")
    assert how == "single-model" and single.is_identity
    # a mixed version without a calibration for the query model is refused, or served raw if allowed
    with pytest.raises(CalibrationMissingError, match="no score calibration for queries of model '3'"):
        calibration_for(galleries, GALLERY, "v2-partial", "3")
    assert calibration_for(galleries, GALLERY, "v2-partial", "3", require=False)[1] == "missing"
    # the manifest, shards and index are untouched: the version still verifies
    galleries.verify_version(GALLERY, "v2-partial", checksums=True)


def test_skip_onto_a_mixed_gallery_adds_the_new_query_models_calibration(
    world: World, any_store: ObjectStore
) -> None:
    """v3 skips onto the live v1+v2 version: the gallery does not change, the query model does."""
    galleries = mixed_version(world, any_store, fitted(world))
    galleries.publish(GALLERY, "v2-partial")
    v3 = build_model(BackboneSpec(arch="small", embedding_dim=DIM, num_classes=5), seed=3).eval()
    models = {**world.models, "3": v3}
    calls = []

    def fit(present: list[str]) -> ScoreCalibration:
        calls.append(present)
        return fit_for_gallery("3", {m: models[m] for m in [*present, "3"]}, world.validation, world.books)

    cal3, how = ensure_calibration(galleries, GALLERY, "v2-partial", "3", fit)
    assert how == "fitted" and calls == [["1", "2"]] and cal3.query_model == "3"
    # v3 holds no segment, but its own scale is the reference: calibrated = "as v3 features would score"
    assert cal3.reference_model == "3" and set(cal3.models) == {"1", "2", "3"}
    assert ensure_calibration(galleries, GALLERY, "v2-partial", "3", fit) == (cal3, "stored")
    assert len(calls) == 1
    assert list_calibrations(galleries, GALLERY, "v2-partial") == ["2", "3"]
    # each query model is served its own calibration; v2's is unchanged (rollback finds it)
    assert GallerySearcher.from_version(galleries, GALLERY, "v2-partial", "3").calibration == cal3
    assert GallerySearcher.from_version(galleries, GALLERY, "v2-partial", "2").calibration.query_model == "2"
    # a sealed version never has a served calibration replaced
    other = cal3.model_copy(update={"maps": {**cal3.maps, "1": AffineMap(scale=2.0, offset=0.0)}})
    with pytest.raises(VersionImmutableError, match="never replaced"):
        write_calibration(galleries, GALLERY, "v2-partial", other)
    # and skip through the engine writes the same way
    assert (
        run_backfill(
            galleries, GALLERY, "v2-partial", "skip", None, None, None, model_version="3", calibration=cal3
        ).version
        == "v2-partial"
    )


def test_stored_calibration_is_checked(world: World, tmp_path) -> None:
    from hotswap.components.gallery.local_store import LocalObjectStore

    galleries = mixed_version(world, LocalObjectStore(tmp_path / "s", fsync=False), fitted(world))
    key = galleries.version_key(GALLERY, "v2-partial", calibration_file("2"))
    data = galleries.store.get_bytes(key)
    galleries.store.put_bytes(key, data.replace(b'"offset": ', b'"offset": 1', 1))
    with pytest.raises(ShardCorruptedError, match="fails its checksum"):
        load_calibration(galleries, GALLERY, "v2-partial", "2")
    galleries.store.put_bytes(key, b"{not json")
    with pytest.raises(ShardCorruptedError, match="unreadable"):
        GallerySearcher.from_version(galleries, GALLERY, "v2-partial", "2")
    incomplete = ScoreCalibration.identity("2", ["2"])
    with pytest.raises(Exception, match="no map for"):
        write_calibration(galleries, GALLERY, "v2-partial", incomplete)
