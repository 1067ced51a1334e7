"""Sources read from objects: manifests of local paths or ``s3://`` URIs, and image folders.

A manifest row (``item_id, uri[, label][, split]``) becomes bytes (a local file or an S3
``get_object``, one boto3 client per process and thread), and Pillow decodes them into uint8 HWC:
RGB stays RGB, grayscale stays one channel. Nothing holds the whole image set; a pass over it goes
through components/data/loading.py, in the caller's process or in DataLoader workers (an
:class:`ObjectSource` pickles: its reader rebuilds its client in each process).

The data version is a sha256 over the sorted rows plus each object's ETag (S3: listed, not
downloaded, so versioning a million-image bucket reads no pixels) or a hash of a local file's bytes
(read, never decoded), so an image replaced by another of the same byte size still changes the
version.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hotswap.components.data.images import SPLITS, DataError, ImageSet, ImageSource, stratified_splits

GALLERY_COLUMNS = ("item_id", "uri")
OPTIONAL_COLUMNS = ("label", "split")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def manifest_from_frame(
    frame: pd.DataFrame,
    source: str = "manifest",
    base_dir: str | Path = ".",
    require_labels: bool = True,
    require_splits: bool = True,
    class_names: Sequence[str] | None = None,
    reader: ObjectReader | None = None,
) -> ImageSet:
    """Validate ``item_id, uri[, label][, split]`` rows; the message names the input and the rows."""
    missing = [c for c in GALLERY_COLUMNS if c not in frame.columns]
    if require_labels and "label" not in frame.columns:
        missing.append("label")
    if require_splits and "split" not in frame.columns:
        missing.append("split")
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}")
    frame = frame.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    frame = frame.loc[:, [*GALLERY_COLUMNS, *OPTIONAL_COLUMNS]]
    if frame["item_id"].isna().any():
        raise DataError(f"{source}: {int(frame['item_id'].isna().sum())} row(s) have no item_id")
    frame["item_id"] = frame["item_id"].astype(str)
    dupes = frame["item_id"][frame["item_id"].duplicated()].unique().tolist()
    if dupes:
        raise DataError(f"{source}: duplicate item_id(s) {dupes[:5]}")
    for column in ("uri", *OPTIONAL_COLUMNS):
        frame[column] = frame[column].fillna("").astype(str).str.strip()
    no_uri = frame["uri"] == ""
    if no_uri.any():
        raise DataError(f"{source}: no uri for item(s) {frame.loc[no_uri, 'item_id'].tolist()[:5]}")
    if require_labels and (frame["label"] == "").any():
        raise DataError(
            f"{source}: missing label for item(s) {frame.loc[frame['label'] == '', 'item_id'].tolist()[:5]}"
        )
    if require_splits:
        bad = ~frame["split"].isin(SPLITS)
        if bad.any():
            raise DataError(
                f"{source}: unknown split value(s) {sorted(frame.loc[bad, 'split'].unique().tolist())[:5]}; "
                f"expected one of {list(SPLITS)}"
            )
    labels = sorted(set(frame["label"]) - {""})
    if class_names is not None:
        unknown = sorted(set(labels) - set(class_names))
        if unknown:
            raise DataError(f"{source}: unknown label(s) {unknown[:5]}")
        labels = list(class_names)
    return ObjectSource(frame, str(base_dir), source, tuple(labels), reader).all()


def read_image_manifest(
    path: str | Path,
    require_labels: bool = True,
    require_splits: bool = True,
    reader: ObjectReader | None = None,
) -> ImageSet:
    """A manifest file (.parquet/.csv); relative URIs resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path}: file does not exist")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            raise DataError(f"manifest {path}: unsupported format {path.suffix!r}; use .parquet or .csv")
    except DataError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many types for a damaged file
        raise DataError(f"manifest {path}: cannot be parsed ({exc})") from exc
    return manifest_from_frame(frame, str(path), path.parent, require_labels, require_splits, reader=reader)


def manifest_from_folder(
    root: str | Path, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> pd.DataFrame:
    """A manifest for an image folder with one sub-folder per class (splits stratified, seeded)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root}: not a directory")
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                rel = image.relative_to(root).as_posix()
                rows.append({"item_id": rel, "uri": rel, "label": class_dir.name})
    if not rows:
        raise DataError(f"image folder {root}: no PNG/JPEG images in class sub-folders")
    frame = pd.DataFrame(rows)
    codes = pd.factorize(frame["label"], sort=True)[0]
    frame["split"] = stratified_splits(codes, fractions, seed)
    return frame


def read_image_folder(root: str | Path, seed: int = 0, reader: ObjectReader | None = None) -> ImageSet:
    """An image folder (one sub-folder per class) as a source read from its files."""
    frame = manifest_from_folder(root, seed=seed)
    return manifest_from_frame(frame, f"image folder {root}", root, reader=reader)


# --------------------------------------------------------------------------- reading objects


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise DataError(f"{uri!r}: not an s3://bucket/key URI")
    return bucket, key


class ObjectReader:
    """Bytes of a local path or an ``s3://`` object; picklable, one boto3 client per process+thread.

    Credentials come from boto3's default chain (environment, profile, instance role); only the
    endpoint is configured here.
    """

    def __init__(self, endpoint_url: str | None = None, max_attempts: int = 5) -> None:
        self.endpoint_url = endpoint_url
        self.max_attempts = max_attempts
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "max_attempts": self.max_attempts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def client(self) -> Any:
        """This process's and thread's client (a forked worker builds its own)."""
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            self._local.client = session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(retries={"mode": "standard", "max_attempts": self.max_attempts}),
            )
            self._local.pid = pid
        return self._local.client

    def read(self, uri: str, base_dir: str = ".") -> bytes:
        if uri.startswith("s3://"):
            bucket, key = split_s3_uri(uri)
            return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        if "://" in uri:
            raise DataError(f"{uri!r}: unsupported URI scheme (use a local path or s3://)")
        path = Path(uri) if Path(uri).is_absolute() else Path(base_dir) / uri
        return path.read_bytes()

    def stats(self, uris: Sequence[str], base_dir: str = ".") -> list[str | None]:
        """Per URI its ETag (S3, from listings: no object is downloaded) or a hash of the file's bytes
        (local); None = absent."""
        out: list[str | None] = [None] * len(uris)
        by_bucket: dict[str, list[tuple[int, str]]] = {}
        for i, uri in enumerate(uris):
            if uri.startswith("s3://"):
                bucket, key = split_s3_uri(uri)
                by_bucket.setdefault(bucket, []).append((i, key))
            else:
                path = Path(uri) if Path(uri).is_absolute() else Path(base_dir) / uri
                out[i] = _file_stamp(path) if path.is_file() else None
        for bucket, entries in by_bucket.items():
            prefix = os.path.commonprefix([k for _, k in entries])
            prefix = prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""
            listed: dict[str, str] = {}
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    listed[obj["Key"]] = f"{obj['ETag'].strip(chr(34))}:{obj['Size']}"
            for i, key in entries:
                out[i] = listed.get(key)
        return out


_STAMPS: dict[tuple[str, int, int], str] = {}


def _file_stamp(path: Path) -> str:
    """A content hash of a local file's bytes (size:blake2b); the bytes are read, never decoded.

    Remembered per process by (path, size, mtime), so versioning the same manifest again (a
    refresh asks several times) reads only the files that changed.
    """
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    stamp = _STAMPS.get(key)
    if stamp is None:
        stamp = f"{stat.st_size}:{hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()}"
        _STAMPS[key] = stamp
    return stamp


class ObjectSource(ImageSource):
    """Rows whose images are objects: local paths (relative ones against ``base_dir``) or S3."""

    def __init__(
        self,
        frame: pd.DataFrame,
        base_dir: str,
        name: str,
        class_names: Sequence[str] | None = None,
        reader: ObjectReader | None = None,
    ) -> None:
        super().__init__(frame, name, class_names)
        self.base_dir = base_dir
        self.reader = reader or ObjectReader()
        self._uris = self.frame["uri"].tolist()
        self.cache_bytes = 0  # decoded images kept for repeated passes in this process (0 = none)
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def keep_decoded(self, max_bytes: int) -> ObjectSource:
        """Keep up to ``max_bytes`` of decoded images in this process, for repeated passes.

        One refresh reads the same rows many times (prototypes, every epoch, validation, the
        served gate, calibration, DPQ, the decision); a set that fits is read from the store once.
        The cache stays in this process: a DataLoader worker receives the source without it, and
        :func:`forget_decoded` empties it (each flow run starts with none, so an object replaced
        under the same key is read again).
        """
        self.cache_bytes = max(0, int(max_bytes))
        return self

    def forget_decoded(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"], state["_cached_bytes"] = {}, 0
        return state

    def image(self, position: int) -> np.ndarray:
        cached = self._cache.get(position)
        if cached is not None:
            return cached
        image = self._read(position)
        if self._cached_bytes + image.nbytes <= self.cache_bytes:
            self._cache[position] = image
            self._cached_bytes += image.nbytes
        return image

    def _read(self, position: int) -> np.ndarray:
        where = self.describe(position)
        try:
            data = self.reader.read(self._uris[position], self.base_dir)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        except Exception as exc:  # botocore NoSuchKey, OSError: one line naming the item
            response = getattr(exc, "response", None)
            code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
            raise DataError(f"{where}: cannot be read ({code or type(exc).__name__}: {exc})") from None
        return decode_uint8(data, where)

    def stamps(self, positions: np.ndarray) -> list[str | None]:
        return self.reader.stats([self._uris[p] for p in positions], self.base_dir)


def decode_uint8(data: bytes, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes → uint8 [H, W, 3] (colour) or [H, W, 1] (grayscale); fully decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: unreadable image ({exc})") from exc
    return array[:, :, None] if array.ndim == 2 else array
