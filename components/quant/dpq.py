"""DPQ codebooks: the trained object, DPQ's greedy encoder and decoder, and their storage.

Everything that *uses* trained codebooks lives here and needs no torch: encoding features into
codes (the greedy rule on hard residuals), decoding codes of any prefix, and storing the
codebooks. Training them (the loss and the loop, and what in it is a reconstruction of the paper)
is components/quant/dpq_training.py; the per-prefix retrieval evaluation is
components/quant/dpq_prefix_retrieval.py.

Codebooks are stored as ``codebooks.npy`` plus ``dpq.json`` (no pickle anywhere).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hotswap.components.core.configs import DPQConfig, Similarity

CODEBOOKS_FILE = "codebooks.npy"
SPEC_FILE = "dpq.json"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- the codebook object


@dataclass
class DPQCodebooks:
    """Trained DPQ codebooks [M, K, d] with DPQ's own encoder and decoder.

    ``config``, ``history`` (per-epoch loss terms and dead-codeword counts) and ``train_seconds``
    are provenance: they travel with the stored files but do not affect encoding.
    """

    codebooks: np.ndarray
    similarity: Similarity = "l2"
    config: DPQConfig | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        books = np.asarray(self.codebooks)
        if books.ndim != 3:
            raise ValueError(f"codebooks must have shape [M, K, d], got {books.shape}")
        k = books.shape[1]
        if k < 2 or k & (k - 1):
            raise ValueError(f"codebooks: K = {k} codewords per block is not a power of two ≥ 2")
        if self.similarity not in ("cosine", "l2"):
            raise ValueError(f"similarity must be 'cosine' or 'l2', got {self.similarity!r}")
        if not np.isfinite(books).all():
            raise ValueError("codebooks contain NaN or infinite values")
        self.codebooks = np.ascontiguousarray(books, dtype=np.float32)

    @property
    def n_blocks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def n_codewords(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dim(self) -> int:
        return self.codebooks.shape[2]

    @property
    def bits_per_block(self) -> int:
        return self.n_codewords.bit_length() - 1

    def code_bits(self, n_blocks: int | None = None) -> int:
        return self._blocks(n_blocks) * self.bits_per_block

    def _blocks(self, n_blocks: int | None) -> int:
        if n_blocks is None:
            return self.n_blocks
        if not 1 <= n_blocks <= self.n_blocks:
            raise ValueError(f"n_blocks must be between 1 and {self.n_blocks}, got {n_blocks}")
        return n_blocks

    def encode(self, features: np.ndarray, n_blocks: int | None = None, chunk: int = 8192) -> np.ndarray:
        """DPQ's greedy rule on hard residuals → codes [N, n_blocks] (uint8 for K ≤ 256).

        The codes of a prefix equal the first columns of the full code, so one encoding serves
        every code length.
        """
        x = check_features(features, "features", dim=self.dim)
        m = self._blocks(n_blocks)
        codes = np.empty((len(x), m), dtype=code_dtype(self.n_codewords))
        for begin in range(0, len(x), chunk):
            residual = x[begin : begin + chunk].copy()
            for block in range(m):
                idx = assign(residual, self.codebooks[block], self.similarity)
                codes[begin : begin + len(idx), block] = idx
                residual -= self.codebooks[block][idx]
        return codes

    def decode(self, codes: np.ndarray, n_blocks: int | None = None) -> np.ndarray:
        """Σ_m c_{m,i_m} over the first ``n_blocks`` columns of ``codes`` (all by default) → [N, d]."""
        codes = np.asarray(codes)
        if codes.ndim == 2 and codes.shape[1] > self.n_blocks:
            raise ValueError(
                f"codes have {codes.shape[1]} blocks but there are only {self.n_blocks} codebooks"
            )
        m = self._blocks(n_blocks) if n_blocks is not None else codes.shape[-1]
        codes = check_codes(codes, self.n_codewords, min_blocks=m)
        out = np.zeros((len(codes), self.dim), dtype=np.float32)
        for block in range(m):
            out += self.codebooks[block][codes[:, block]]
        return out

    def prefix(self, n_blocks: int) -> DPQCodebooks:
        """The first ``n_blocks`` codebooks as their own object (a shorter code of the same training)."""
        m = self._blocks(n_blocks)
        return DPQCodebooks(self.codebooks[:m].copy(), self.similarity, self.config, self.history)

    # ---------------------------------------------------------------- persistence (no pickle)

    def spec(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "n_blocks": self.n_blocks,
            "n_codewords": self.n_codewords,
            "dim": self.dim,
            "similarity": self.similarity,
            "train_seconds": self.train_seconds,
            "config": self.config.model_dump() if self.config is not None else None,
            "history": self.history,
        }

    @staticmethod
    def file_names() -> tuple[str, str]:
        """The files a stored codebook set consists of (what ``to_files`` returns)."""
        return (SPEC_FILE, CODEBOOKS_FILE)

    def to_files(self) -> dict[str, bytes]:
        """The two stored files as bytes (for an object store or MLflow artifacts)."""
        buffer = io.BytesIO()
        np.save(buffer, self.codebooks, allow_pickle=False)
        return {CODEBOOKS_FILE: buffer.getvalue(), SPEC_FILE: json.dumps(self.spec(), indent=2).encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes], source: str = "codebooks") -> DPQCodebooks:
        for name in (SPEC_FILE, CODEBOOKS_FILE):
            if name not in files:
                raise ValueError(f"{source}: missing {name}")
        try:
            spec = json.loads(files[SPEC_FILE])
            books = np.load(io.BytesIO(files[CODEBOOKS_FILE]), allow_pickle=False)
            similarity = spec["similarity"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}: unreadable codebook files ({exc!r})") from exc
        expected = (spec.get("n_blocks"), spec.get("n_codewords"), spec.get("dim"))
        if books.shape != expected:
            raise ValueError(
                f"{source}: {CODEBOOKS_FILE} has shape {books.shape}, {SPEC_FILE} says {expected}"
            )
        config = DPQConfig.model_validate(spec["config"]) if spec.get("config") else None
        return cls(books, similarity, config, spec.get("history", []), spec.get("train_seconds", 0.0))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.to_files().items():
            (directory / name).write_bytes(data)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DPQCodebooks:
        directory = Path(directory)
        files = {
            p.name: p.read_bytes() for p in (directory / SPEC_FILE, directory / CODEBOOKS_FILE) if p.exists()
        }
        return cls.from_files(files, source=str(directory))


def assign(residual: np.ndarray, codebook: np.ndarray, similarity: Similarity) -> np.ndarray:
    """DPQ's hard code for one block: argmax_k s(r, c_k), without the per-row constant ‖r‖.

    l2: argmax ⟨r,c⟩ − ½‖c‖² (the nearest codeword); cosine: argmax ⟨r,c⟩/‖c‖.
    """
    norms = np.linalg.norm(codebook, axis=1)
    scores = residual @ codebook.T
    if similarity == "l2":
        scores -= 0.5 * norms**2
    else:
        scores /= np.maximum(norms, 1e-12)
    return scores.argmax(axis=1)


def code_dtype(n_codewords: int) -> type[np.unsignedinteger]:
    return np.uint8 if n_codewords <= 256 else np.uint16


def check_features(features: np.ndarray, role: str, dim: int | None = None) -> np.ndarray:
    """2-D, finite, floating → contiguous float32; otherwise a ValueError naming ``role``."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{role} must be 2-D [N, d], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{role} must be floating point, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{role} have dimension {x.shape[1]}, the codebooks expect {dim}")
    if not np.isfinite(x).all():
        raise ValueError(f"{role} contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_codes(codes: np.ndarray, n_codewords: int, min_blocks: int = 1) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be a 2-D integer array [N, M], got {codes.dtype} {codes.shape}")
    if codes.shape[1] < min_blocks:
        raise ValueError(f"codes have {codes.shape[1]} blocks, {min_blocks} requested")
    if codes.size and (codes.min() < 0 or codes.max() >= n_codewords):
        raise ValueError(f"codes must lie in [0, {n_codewords}), got [{codes.min()}, {codes.max()}]")
    return codes.astype(np.int64, copy=False)
