"""faiss serving of DPQ codes: exact scores, prefixes, IVF equivalence, bytes, input checks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hotswap.components.quant.index import (
    build_flat_index,
    build_ivf_index,
    bytes_per_item,
    index_from_bytes,
    index_to_bytes,
    search,
)

faiss.omp_set_num_threads(1)

D, M, K, N = 16, 3, 256, 600


@pytest.fixture(scope="module")
def gallery() -> dict[str, np.ndarray]:
    """Random codebooks (shrinking per block, like residual codebooks) and unique random codes."""
    rng = np.random.default_rng(0)
    books = (rng.standard_normal((M, K, D)) * np.array([1.0, 0.5, 0.25])[:, None, None]).astype(np.float32)
    codes = np.unique(rng.integers(0, K, size=(N, M)), axis=0)
    codes = codes[rng.permutation(len(codes))].astype(np.uint8)
    ids = rng.choice(10**12, size=len(codes), replace=False).astype(np.int64) + 10**12
    queries = rng.standard_normal((40, D)).astype(np.float32)
    return {"books": books, "codes": codes, "ids": ids, "queries": queries}


def direct_scores(books: np.ndarray, codes: np.ndarray, queries: np.ndarray, m: int) -> np.ndarray:
    """DPQ's asymmetric score ⟨q, Σ_{l<m} c_{l,i_l}⟩, computed densely in float64."""
    recon = sum(books[level].astype(np.float64)[codes[:, level]] for level in range(m))
    return queries.astype(np.float64) @ recon.T


def assert_exact_ranking(result, expected: np.ndarray, ids: np.ndarray, k: int) -> None:
    """faiss returns the top-k of the direct scores, each id with its own score.

    Items whose direct scores differ by less than float32 rounding may swap places, so ids are
    compared position by position only where the expected ranking is unambiguous.
    """
    order = np.argsort(-expected, axis=1, kind="stable")[:, : k + 1]  # one more: ties across rank k
    top = np.take_along_axis(expected, order, axis=1)
    np.testing.assert_allclose(result.scores, top[:, :k], atol=1e-5)
    row_of = {int(i): r for r, i in enumerate(ids)}
    returned = np.vectorize(row_of.__getitem__)(result.ids)
    np.testing.assert_allclose(np.take_along_axis(expected, returned, axis=1), result.scores, atol=1e-5)
    gaps = np.abs(np.diff(top, axis=1))
    clear = np.ones((len(top), k), dtype=bool)
    clear[:, 1:] &= gaps[:, : k - 1] > 1e-4
    clear &= gaps > 1e-4
    order = order[:, :k]
    assert clear.mean() > 0.9  # the comparison below must actually cover most positions
    np.testing.assert_array_equal(result.ids[clear], ids[order][clear])


@pytest.mark.parametrize("m", [1, 2, 3])
def test_flat_search_equals_direct_inner_product_for_every_prefix(gallery, m):
    index = build_flat_index(gallery["books"], gallery["codes"], gallery["ids"], n_blocks=m)
    k = 25
    result = search(index, gallery["queries"], k=k)
    expected = direct_scores(gallery["books"], gallery["codes"], gallery["queries"], m)
    if m == 1:
        # one block = 256 distinct vectors for 600 items: ties everywhere, so check scores + ids only
        np.testing.assert_allclose(result.scores, -np.sort(-expected, axis=1)[:, :k], atol=1e-5)
        row_of = {int(i): r for r, i in enumerate(gallery["ids"])}
        rows = np.vectorize(row_of.__getitem__)(result.ids)
        np.testing.assert_allclose(np.take_along_axis(expected, rows, axis=1), result.scores, atol=1e-5)
    else:
        assert_exact_ranking(result, expected, gallery["ids"], k)


def test_prefix_index_reconstructs_prefix_sum_of_codewords(gallery):
    books, codes, ids = gallery["books"], gallery["codes"], gallery["ids"]
    index = build_flat_index(books, codes, ids, n_blocks=2)
    for row in (0, 17, len(ids) - 1):
        expected = books[0][codes[row, 0]] + books[1][codes[row, 1]]
        np.testing.assert_allclose(index.reconstruct(int(ids[row])), expected, atol=1e-6)
    assert bytes_per_item(index) == 2 + 8


def test_ivf_at_full_nprobe_equals_flat_and_small_nprobe_scans_best_lists(gallery):
    books, codes, ids, queries = gallery["books"], gallery["codes"], gallery["ids"], gallery["queries"]
    flat = search(build_flat_index(books, codes, ids), queries, k=20)
    ivf = build_ivf_index(books, codes, ids, nprobe=4)
    full = search(ivf, queries, k=20, nprobe=K)
    np.testing.assert_allclose(full.scores, flat.scores, atol=1e-5)
    expected = direct_scores(books, codes, queries, M)
    assert_exact_ranking(full, expected, ids, 20)

    # nprobe = 1: every hit lies in the list of the query's best first-level codeword
    one = search(ivf, queries, k=5, nprobe=1)
    best_list = (queries @ books[0].T).argmax(axis=1)
    first_code = dict(zip(ids.tolist(), codes[:, 0].tolist(), strict=True))
    for q, row in enumerate(one.ids):
        assert {first_code[int(i)] for i in row if i >= 0} <= {int(best_list[q])}


def test_serialized_indexes_round_trip(gallery):
    books, codes, ids, queries = gallery["books"], gallery["codes"], gallery["ids"], gallery["queries"]
    for index, nprobe in (
        (build_flat_index(books, codes, ids), None),
        (build_ivf_index(books, codes, ids), 8),
    ):
        data = index_to_bytes(index)
        assert isinstance(data, bytes)
        restored = index_from_bytes(data)
        assert restored.ntotal == len(ids)
        before, after = search(index, queries, 10, nprobe), search(restored, queries, 10, nprobe)
        np.testing.assert_array_equal(before.ids, after.ids)
        np.testing.assert_array_equal(before.scores, after.scores)


def test_four_bit_blocks_are_bit_packed_correctly():
    """K = 16 (4-bit blocks) goes through faiss's bit packing instead of raw bytes."""
    rng = np.random.default_rng(1)
    books = rng.standard_normal((3, 16, 8)).astype(np.float32)
    codes = np.unique(rng.integers(0, 16, size=(300, 3)), axis=0)
    ids = np.arange(len(codes), dtype=np.int64) * 3
    queries = rng.standard_normal((10, 8)).astype(np.float32)
    expected = direct_scores(books, codes, queries, 3)
    assert_exact_ranking(search(build_flat_index(books, codes, ids), queries, 10), expected, ids, 10)
    ivf = build_ivf_index(books, codes, ids)
    assert_exact_ranking(search(ivf, queries, 10, nprobe=16), expected, ids, 10)
    assert bytes_per_item(build_flat_index(books, codes, ids)) == 2 + 8  # 12 bits → 2 bytes


def test_queries_are_checked_with_clear_errors(gallery):
    index = build_flat_index(gallery["books"], gallery["codes"], gallery["ids"])
    good = gallery["queries"]
    with pytest.raises(ValueError, match="dimension 15.*expects d = 16"):
        search(index, good[:, :15], k=5)
    with pytest.raises(ValueError, match="2-D.*reshape"):
        search(index, good[0], k=5)
    with pytest.raises(ValueError, match="floating"):
        search(index, good.astype(np.int64), k=5)
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        search(index, bad, k=5)
    with pytest.raises(ValueError, match="k must be"):
        search(index, good, k=0)
    with pytest.raises(ValueError, match="IVF indexes only"):
        search(index, good, k=5, nprobe=4)
    ivf = build_ivf_index(gallery["books"], gallery["codes"], gallery["ids"])
    with pytest.raises(ValueError, match="nprobe"):
        search(ivf, good, k=5, nprobe=K + 1)
    # float64 queries are accepted and give the float32 answer
    np.testing.assert_array_equal(search(index, good.astype(np.float64), 5).ids, search(index, good, 5).ids)


def test_bad_build_inputs_are_rejected(gallery):
    books, codes, ids = gallery["books"], gallery["codes"], gallery["ids"]
    with pytest.raises(ValueError, match="unique"):
        build_flat_index(books, codes, np.zeros(len(codes), dtype=np.int64))
    with pytest.raises(ValueError, match="ids must be"):
        build_flat_index(books, codes, ids[:-1])
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\)"):
        build_flat_index(books, codes.astype(np.int64) + 1, ids)
    with pytest.raises(ValueError, match="n_blocks"):
        build_flat_index(books, codes, ids, n_blocks=4)
    with pytest.raises(ValueError, match="power of two"):
        build_flat_index(books[:, :200], codes, ids)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        build_ivf_index(books, codes, ids, n_blocks=1)
    with pytest.raises(ValueError, match="not a readable faiss index"):
        index_from_bytes(b"definitely not an index")
