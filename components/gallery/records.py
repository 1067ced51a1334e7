"""Records and layout of a versioned gallery (see components/gallery/versions.py for the protocol).

Everything here is pure: the pydantic models written as JSON (shard records, staging record,
manifest, CURRENT pointer, seal), the key layout of a version folder, the error types, and the
validation/serialisation of shard arrays. Keeping it apart from the store logic lets readers of
a manifest (an auditor, the backfill engine) use it without the writer.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args
from uuid import uuid4

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

ArrayKind = Literal["features", "codes", "ids"]
ARRAY_KINDS: tuple[ArrayKind, ...] = get_args(ArrayKind)
IdKind = Literal["int64", "str"]
FORMAT_VERSION = 1
_SHA256_RE = r"^[0-9a-f]{64}$"


class GalleryError(Exception):
    """Base class: anything wrong with a gallery, its versions or their files."""


class ManifestError(GalleryError):
    """A version's manifest is missing, unparseable, invalid or inconsistent."""


class ShardCorruptedError(GalleryError):
    """A shard file is missing, fails its checksum, or does not hold what the manifest says."""


class VersionImmutableError(GalleryError):
    """An attempt to change a version that CURRENT has pointed at."""


class VersionIncompleteError(GalleryError):
    """A version lacks shards or files, so it cannot be finalized or made current."""


# --------------------------------------------------------------------------- records


class _Record(BaseModel):
    """Frozen, strict JSON records: an unknown field in a stored file is corruption, not data."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Record):
    """One stored file: path relative to the version folder, byte size and sha256 of its bytes."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256_RE)


class ShardRecord(_Record):
    """What one shard holds; written after its files, so its presence commits the shard."""

    index: int = Field(ge=0)
    count: int = Field(ge=0)
    id_kind: IdKind
    feature_dim: int | None = Field(default=None, ge=1)
    code_length: int | None = Field(default=None, ge=1)
    code_dtype: str | None = None
    files: dict[ArrayKind, FileEntry]

    @model_validator(mode="after")
    def _files_named_as_layout(self) -> ShardRecord:
        for kind, entry in self.files.items():
            if entry.path != shard_file(self.index, kind):
                raise ValueError(
                    f"shard {self.index} {kind} file is {entry.path!r}, expected "
                    f"{shard_file(self.index, kind)!r}"
                )
        if ("features" in self.files) != (self.feature_dim is not None):
            raise ValueError(f"shard {self.index}: feature_dim must be set exactly when features are stored")
        if ("codes" in self.files) != (self.code_length is not None and self.code_dtype is not None):
            raise ValueError(
                f"shard {self.index}: code_length/code_dtype must be set exactly when codes are stored"
            )
        if "ids" not in self.files:
            raise ValueError(f"shard {self.index}: has no ids file")
        return self


class StagingRecord(_Record):
    """A version's job parameters, fixed when it is begun; a resumed run must present the same."""

    format_version: Literal[1] = FORMAT_VERSION
    gallery: str
    version: str
    model_version: str
    codebook_version: str | None = None
    parent_version: str | None = None
    num_shards: int = Field(ge=1)
    arrays: tuple[ArrayKind, ...]
    created_at: datetime
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class GalleryManifest(_Record):
    """A finished version: its provenance, every shard with counts and checksums, totals."""

    format_version: Literal[1] = FORMAT_VERSION
    gallery: str
    version: str
    model_version: str
    codebook_version: str | None = None
    parent_version: str | None = None
    created_at: datetime
    arrays: tuple[ArrayKind, ...]
    num_shards: int = Field(ge=1)
    num_items: int = Field(ge=0)
    id_kind: IdKind
    feature_dim: int | None = None
    code_length: int | None = None
    code_dtype: str | None = None
    shards: list[ShardRecord]
    index: FileEntry | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> GalleryManifest:
        if [s.index for s in self.shards] != list(range(self.num_shards)):
            raise ValueError(
                f"shards are {[s.index for s in self.shards]}, expected 0..{self.num_shards - 1}"
            )
        total = sum(s.count for s in self.shards)
        if total != self.num_items:
            raise ValueError(f"num_items={self.num_items} but the shards hold {total} items")
        for shard in self.shards:
            if set(shard.files) != set(self.arrays):
                raise ValueError(
                    f"shard {shard.index} stores {sorted(shard.files)}, expected {sorted(self.arrays)}"
                )
            own = (shard.id_kind, shard.feature_dim, shard.code_length, shard.code_dtype)
            if own != (self.id_kind, self.feature_dim, self.code_length, self.code_dtype):
                raise ValueError(
                    f"shard {shard.index} has (id_kind, feature_dim, code_length, code_dtype)={own}, "
                    f"the manifest says {(self.id_kind, self.feature_dim, self.code_length, self.code_dtype)}"
                )
        if self.index is not None and self.index.path != INDEX_FILE:
            raise ValueError(f"index path is {self.index.path!r}, expected {INDEX_FILE!r}")
        return self

    def files(self) -> list[FileEntry]:
        """Every file of the version (shards, then the index)."""
        entries = [entry for shard in self.shards for entry in shard.files.values()]
        return entries + ([self.index] if self.index is not None else [])


class CurrentPointer(_Record):
    """The CURRENT object: the live version, and the one it replaced (for rollback and audit)."""

    gallery: str
    version: str
    previous: str | None = None
    updated_at: datetime


@dataclass(frozen=True)
class GalleryArrays:
    """Rows of a shard or a whole version, aligned by position; absent arrays are None."""

    ids: np.ndarray
    features: np.ndarray | None = None
    codes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------- layout

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
STAGING_FILE = "staging.json"
SEAL_FILE = "PUBLISHED"


def shard_file(n: int, kind: ArrayKind) -> str:
    """Path of a shard's array file, relative to the version folder."""
    return f"shards/{n:06d}.{kind}.npy"


def shard_record_file(n: int) -> str:
    return f"shards/{n:06d}.json"


def new_version_id(now: datetime | None = None) -> str:
    """A fresh version id that sorts by creation time, e.g. ``20261123T101500Z-3f9a1c``."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{uuid4().hex[:6]}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_json(record: BaseModel) -> bytes:
    return (record.model_dump_json(indent=2) + "\n").encode("utf-8")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"created_at={moment!r} must be timezone-aware")
    return moment.astimezone(UTC)


class SealRecord(_Record):
    """The PUBLISHED object: its existence makes a version immutable; the time is for audit."""

    sealed_at: datetime


# --------------------------------------------------------------------------- shard arrays


def prepare_shard_arrays(given: dict[str, np.ndarray | None], where: str) -> dict[str, np.ndarray]:
    """Validate and normalise shard arrays; errors name the shard, the array and the problem."""
    out: dict[str, np.ndarray] = {}
    ids = np.asarray(given["ids"])
    if ids.ndim != 1:
        raise ValueError(f"{where}: ids must be 1-D, got shape {ids.shape}")
    if ids.dtype.kind in "iu":
        ids = ids.astype(np.int64)
    elif ids.dtype.kind != "U":
        raise ValueError(f"{where}: ids must be integers or str (numpy 'U'), got dtype {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{where}: ids contain duplicates")
    out["ids"] = ids
    count = len(ids)
    if given["features"] is not None:
        feats = np.asarray(given["features"])
        if feats.dtype.kind != "f":
            raise ValueError(f"{where}: features must be floating point, got dtype {feats.dtype}")
        if feats.ndim != 2 or feats.shape[0] != count or feats.shape[1] < 1:
            raise ValueError(
                f"{where}: features must have shape [{count}, d>=1] to match ids, got {feats.shape}"
            )
        feats = feats.astype(np.float32)
        if not np.isfinite(feats).all():
            raise ValueError(f"{where}: features contain NaN or infinite values")
        out["features"] = feats
    if given["codes"] is not None:
        codes = np.asarray(given["codes"])
        if codes.dtype.kind != "u":
            raise ValueError(
                f"{where}: codes must be unsigned integers (e.g. uint8), got dtype {codes.dtype}"
            )
        if codes.ndim != 2 or codes.shape[0] != count or codes.shape[1] < 1:
            raise ValueError(
                f"{where}: codes must have shape [{count}, m>=1] to match ids, got {codes.shape}"
            )
        out["codes"] = codes
    return out


def check_array_shape(array: np.ndarray, kind: str, shard: ShardRecord, where: str) -> None:
    if kind == "ids":
        ok = array.shape == (shard.count,) and (
            array.dtype.kind == "U" if shard.id_kind == "str" else array.dtype == np.int64
        )
    elif kind == "features":
        ok = array.shape == (shard.count, shard.feature_dim) and array.dtype == np.float32
    else:
        ok = array.shape == (shard.count, shard.code_length) and array.dtype.name == shard.code_dtype
    if not ok:
        raise ShardCorruptedError(
            f"{where}: holds {array.dtype} {array.shape}, not what the manifest records"
        )


def first_error(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error (JSON syntax or field problem) for error messages."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    err = errors[0]
    loc = ".".join(str(part) for part in err.get("loc", ()))
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc + ': ' if loc else ''}{err.get('msg', '')}{more}"
