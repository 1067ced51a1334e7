"""Serving parts without HTTP or MLflow: batching never mixes pairs, the searcher refuses broken bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.gallery.search import GallerySearcher
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.quant.index import build_flat_index, index_to_bytes
from hotswap.components.serving.batching import QueryBatcher
from hotswap.components.serving.pair import LivePair, PairUnhealthyError, health_check
from hotswap.components.serving.searcher import GalleryLoadError, open_searcher

D, N, M, K_WORDS = 16, 64, 2, 16


def _pair(seed: int, version: str) -> LivePair:
    rng = np.random.default_rng(seed)
    books = rng.standard_normal((M, K_WORDS, D)).astype(np.float32)
    codes = rng.integers(0, K_WORDS, size=(N, M))
    index = build_flat_index(books, codes, np.arange(N, dtype=np.int64))
    ids = np.array([f"{version}-item{i}" for i in range(N)])
    model = build_model(BackboneSpec(arch="small", embedding_dim=D, num_classes=3), seed=seed).eval()
    searcher = GallerySearcher(
        index, ids, version, ScoreCalibration.identity(version, [version]), gallery_version=f"g{version}"
    )
    return LivePair(version, model, f"g{version}", searcher)


def test_concurrent_queries_share_one_forward_pass_per_pair() -> None:
    a, b = _pair(0, "1"), _pair(1, "2")
    calls: list[int] = []
    for pair in (a, b):
        pair.model.trunk.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    batcher = QueryBatcher(batch_size=16, max_wait_s=0.5)
    images = np.random.default_rng(2).random((6, 1, 28, 28)).astype(np.float32)
    futures = [
        (p, batcher.submit(p, images=images[i : i + 1], k=5)) for i, p in enumerate([a, b, a, b, a, a])
    ]
    batcher.start()  # everything is queued already: one batch, split by pair
    answers = [(p, f.result(timeout=60)) for p, f in futures]
    batcher.stop()
    assert sorted(calls) == [2, 4]  # one forward pass per pair, not one per query
    for i, (pair, answer) in enumerate(answers):
        assert (answer.model_version, answer.gallery_version) == (pair.model_version, pair.gallery_version)
        direct_scores, direct_ids = pair.search(pair.embed(images[i : i + 1]), 5)
        np.testing.assert_allclose(answer.scores, direct_scores, atol=1e-5)
        assert all(item.startswith(pair.model_version + "-") for item in answer.item_ids[0])


def test_a_failing_batch_fails_its_queries_and_the_worker_goes_on() -> None:
    pair = _pair(0, "1")
    batcher = QueryBatcher(batch_size=4, max_wait_s=0.0)
    batcher.start()
    bad = batcher.submit(pair, embeddings=np.ones((1, D + 1), np.float32), k=3)
    with pytest.raises(ValueError, match="dimension"):
        bad.result(timeout=60)
    good = batcher.submit(pair, embeddings=np.ones((1, D), np.float32), k=3)
    assert good.result(timeout=60).scores.shape == (1, 3)
    batcher.stop()


def test_health_check_reports_self_hits_and_enforces_the_minimum() -> None:
    pair = _pair(0, "1")
    ((_, index, _),) = pair.searcher.segments  # a single-model version: its one index
    features = index.reconstruct_n(0, 8)
    checked = health_check(pair, probe_features=features, probe_ids=pair.item_ids[:8], k=5)
    assert checked.health["self_queries"] == 8 and 0 <= checked.health["self_hit"] <= 1
    assert checked.searcher is pair.searcher and checked.model is pair.model
    with pytest.raises(PairUnhealthyError, match="find themselves"):
        health_check(pair, probe_features=-features, probe_ids=pair.item_ids[:8], k=1, min_self_hit=1.0)


def test_open_searcher_refuses_corrupt_or_inconsistent_versions(tmp_path) -> None:
    galleries = GalleryStore(open_store(str(tmp_path)))
    rng = np.random.default_rng(0)
    books = rng.standard_normal((M, K_WORDS, D)).astype(np.float32)
    codes = rng.integers(0, K_WORDS, size=(N, M)).astype(np.uint8)
    ids = np.array([f"item{i}" for i in range(N)])

    def version(name: str, index_bytes: bytes) -> None:
        writer = galleries.begin_version("g", name, model_version="1", num_shards=1, arrays=("ids", "codes"))
        writer.write_shard(0, ids, codes=codes)
        writer.finalize(index_bytes=index_bytes)

    good = index_to_bytes(build_flat_index(books, codes, np.arange(N, dtype=np.int64)))
    version("ok", good)
    searcher = open_searcher(galleries, "g", "ok")
    scores, found = searcher.search(rng.standard_normal((2, D)).astype(np.float32), 4)
    assert scores.shape == found.shape == (2, 4) and set(found.ravel()) <= set(ids)

    key = galleries.version_key("g", "ok", "index.faiss")
    data = bytearray(galleries.store.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    galleries.store.put_bytes(key, bytes(data))  # flipped byte in storage: the checksum catches it
    with pytest.raises(GalleryLoadError, match="fails its checksum"):
        open_searcher(galleries, "g", "ok")

    version("garbage", b"definitely not faiss" * 4)  # checksummed garbage: faiss refuses it
    with pytest.raises(GalleryLoadError, match="index.faiss is broken"):
        open_searcher(galleries, "g", "garbage")

    half = index_to_bytes(build_flat_index(books, codes[: N // 2], np.arange(N // 2, dtype=np.int64)))
    version("short", half)
    with pytest.raises(GalleryLoadError, match="holds 32 items, the manifest 64"):
        open_searcher(galleries, "g", "short")
    with pytest.raises(GalleryLoadError, match="missing"):
        open_searcher(galleries, "g", "never-written")
