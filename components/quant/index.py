"""Serving DPQ codes with faiss: exact asymmetric inner-product search over stored codes.

DPQ scores a gallery item by ⟨q, Σ_m c_{m,i_m}⟩ with the query left unquantized. faiss's
``IndexResidualQuantizer`` with METRIC_INNER_PRODUCT and ``ST_LUT_nonorm`` computes exactly that
from look-up tables (one [M, K] table per query, then M additions per item), so DPQ's codebooks
are copied into it and DPQ's own codes are inserted with ``add_sa_codes``: faiss's beam encoder
is a different rule and must never re-encode (reference/dpq-and-faiss.md §3).

- flat: ``IndexIDMap2(IndexResidualQuantizer)``, the exact DPQ ranking, any code prefix;
- IVF: the first codebook is the coarse quantizer (``IndexFlatIP``, nlist = K) and an
  ``IndexIVFResidualQuantizer`` holds blocks 2..M; at nprobe = nlist it equals flat, smaller
  nprobe trades recall for speed.

Never use METRIC_L2 with ST_LUT_nonorm: faiss then ranks by ‖q‖² − ⟨q, x̂⟩ without complaint.
Indexes travel as bytes (``index_to_bytes``) so they can live in an object store.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

DEFAULT_NPROBE = 16


@dataclass(frozen=True)
class SearchResult:
    """Top-k inner-product scores (descending) and the stored ids; -1 pads missing hits."""

    scores: np.ndarray  # float32 [Q, k]
    ids: np.ndarray  # int64 [Q, k]


# --------------------------------------------------------------------------- input checks


def _check_codebooks(codebooks: np.ndarray) -> tuple[np.ndarray, int]:
    books = np.asarray(codebooks)
    if books.ndim != 3:
        raise ValueError(f"codebooks must have shape [M, K, d], got {books.shape}")
    k = books.shape[1]
    if k < 2 or k & (k - 1):
        raise ValueError(f"codebooks: K = {k} codewords per block is not a power of two ≥ 2")
    if not np.isfinite(books).all():
        raise ValueError("codebooks contain NaN or infinite values")
    return np.ascontiguousarray(books, dtype=np.float32), k.bit_length() - 1


def _check_codes_ids(codes: np.ndarray, ids: np.ndarray, n_blocks: int, n_codewords: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be a 2-D integer array [N, M], got {codes.dtype} {codes.shape}")
    if codes.shape[1] < n_blocks:
        raise ValueError(f"codes have {codes.shape[1]} blocks, the index needs {n_blocks}")
    codes = codes[:, :n_blocks]
    if codes.size and (codes.min() < 0 or codes.max() >= n_codewords):
        raise ValueError(f"codes must lie in [0, {n_codewords}), got [{codes.min()}, {codes.max()}]")
    ids = np.asarray(ids)
    if ids.shape != (len(codes),) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"ids must be an integer array of shape ({len(codes)},), got {ids.dtype} {ids.shape}"
        )
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique: a duplicated id could not be told apart in search results")
    return codes


def _prefix(books: np.ndarray, n_blocks: int | None) -> int:
    if n_blocks is None:
        return books.shape[0]
    if not 1 <= n_blocks <= books.shape[0]:
        raise ValueError(f"n_blocks must be between 1 and {books.shape[0]}, got {n_blocks}")
    return n_blocks


def _set_codebooks(rq: faiss.ResidualQuantizer, books: np.ndarray) -> None:
    """Hand-set trained codebooks: copy [M, K, d] row-major, mark trained, fill the tables."""
    faiss.copy_array_to_vector(np.ascontiguousarray(books, dtype=np.float32).ravel(), rq.codebooks)
    rq.is_trained = True
    rq.compute_codebook_tables()


def _pack(rq: faiss.ResidualQuantizer, codes: np.ndarray) -> np.ndarray:
    """Bit-pack [N, M] codes the way faiss stores them (for 8-bit blocks: the bytes themselves)."""
    if rq.M == 0:
        return np.zeros((len(codes), 0), dtype=np.uint8)
    if all(rq.nbits.at(i) == 8 for i in range(rq.M)):
        return np.ascontiguousarray(codes, dtype=np.uint8)
    unpacked = np.ascontiguousarray(codes, dtype=np.int32)
    packed = np.empty((len(codes), rq.code_size), dtype=np.uint8)
    rq.pack_codes(len(codes), faiss.swig_ptr(unpacked), faiss.swig_ptr(packed))
    return packed


# --------------------------------------------------------------------------- building


def build_flat_index(
    codebooks: np.ndarray, codes: np.ndarray, ids: np.ndarray, n_blocks: int | None = None
) -> faiss.IndexIDMap2:
    """Exact DPQ search over the first ``n_blocks`` blocks of ``codes`` (all by default).

    ``codebooks`` [M, K, d] float32; ``codes`` [N, ≥n_blocks] integers from DPQ's encoder;
    ``ids`` [N] unique int64 returned by search (e.g. gallery row numbers).
    """
    books, nbits = _check_codebooks(codebooks)
    m = _prefix(books, n_blocks)
    codes = _check_codes_ids(codes, ids, m, books.shape[1])
    d = books.shape[2]
    base = faiss.IndexResidualQuantizer(
        d, m, nbits, faiss.METRIC_INNER_PRODUCT, faiss.AdditiveQuantizer.ST_LUT_nonorm
    )
    _set_codebooks(base.rq, books[:m])
    base.is_trained = True
    index = faiss.IndexIDMap2(base)
    index.add_sa_codes(_pack(base.rq, codes), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def build_ivf_index(
    codebooks: np.ndarray,
    codes: np.ndarray,
    ids: np.ndarray,
    n_blocks: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
) -> faiss.IndexIVFResidualQuantizer:
    """IVF over DPQ codes: codebook 1 is the coarse quantizer, blocks 2..n_blocks the residual code.

    Scores are identical to the flat index (⟨q, c_1⟩ + Σ_{m≥2} ⟨q, c_m⟩); only the lists with the
    ``nprobe`` best ⟨q, c_1⟩ are scanned. Needs at least two blocks.
    """
    books, nbits = _check_codebooks(codebooks)
    m = _prefix(books, n_blocks)
    if m < 2:
        raise ValueError("an IVF index needs at least 2 blocks (1 coarse + 1 residual); use build_flat_index")
    codes = _check_codes_ids(codes, ids, m, books.shape[1])
    k, d = books.shape[1], books.shape[2]
    if not 1 <= nprobe <= k:
        raise ValueError(f"nprobe must be between 1 and nlist = {k}, got {nprobe}")
    coarse = faiss.IndexFlatIP(d)
    coarse.add(books[0])
    ivf = faiss.IndexIVFResidualQuantizer(
        coarse, d, k, m - 1, nbits, faiss.METRIC_INNER_PRODUCT, faiss.AdditiveQuantizer.ST_LUT_nonorm
    )
    ivf.own_fields = True
    coarse.this.disown()  # the IVF index frees its quantizer; Python must not free it a second time
    _set_codebooks(ivf.rq, books[1:m])
    ivf.is_trained = True
    ivf.nprobe = nprobe
    # an IVF "sa code" is the list number (little-endian, coarse_code_size bytes) + the packed rest
    listno = codes[:, 0].astype("<u8").view(np.uint8).reshape(len(codes), 8)[:, : ivf.coarse_code_size()]
    sa_codes = np.hstack([listno, _pack(ivf.rq, codes[:, 1:])])
    ivf.add_sa_codes(np.ascontiguousarray(sa_codes), np.ascontiguousarray(ids, dtype=np.int64))
    return ivf


# --------------------------------------------------------------------------- bytes


def index_to_bytes(index: faiss.Index) -> bytes:
    """faiss's own serialization (no pickle); codebook tables are recomputed on load."""
    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes) -> faiss.Index:
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise ValueError("index bytes are empty or not bytes")
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise ValueError(f"not a readable faiss index ({str(exc).splitlines()[0]})") from exc


# --------------------------------------------------------------------------- search


def search(index: faiss.Index, queries: np.ndarray, k: int = 10, nprobe: int | None = None) -> SearchResult:
    """Top-``k`` gallery ids by ⟨q, x̂⟩ for float queries [Q, d]; ``nprobe`` only for IVF indexes.

    Queries are checked first, because faiss itself would read a wrong-dimension array as a
    different number of vectors, or crash, instead of failing.
    """
    q = np.asarray(queries)
    if q.ndim != 2:
        hint = " (use queries.reshape(1, -1) for one query)" if q.ndim == 1 else ""
        raise ValueError(f"queries must be 2-D [Q, d], got shape {q.shape}{hint}")
    if not np.issubdtype(q.dtype, np.floating):
        raise ValueError(f"queries must be floating point (float32), got dtype {q.dtype}")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index expects d = {index.d}")
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if nprobe is not None:
        if ivf is None:
            raise ValueError("nprobe applies to IVF indexes only; this index is flat")
        if not 1 <= nprobe <= ivf.nlist:
            raise ValueError(f"nprobe must be between 1 and nlist = {ivf.nlist}, got {nprobe}")
        scores, ids = index.search(q, int(k), params=faiss.SearchParametersIVF(nprobe=int(nprobe)))
    else:
        scores, ids = index.search(q, int(k))
    return SearchResult(scores=scores, ids=ids)


def bytes_per_item(index: faiss.Index) -> int:
    """Stored bytes per gallery item: the code plus its 8-byte id."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return int(ivf.code_size) + 8
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return int(base.code_size) + 8
