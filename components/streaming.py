"""Streaming image data: manifests of local files or S3 objects, read lazily through a DataLoader.

A team's gallery holds millions of images and its training manifest grows; nothing here ever
holds all of them. A manifest row (``item_id, uri[, label][, split]``) becomes bytes (a local file
or an S3 ``get_object``, one boto3 client per worker process), Pillow decodes it into uint8 HWC,
and each model's own :class:`~components.preprocess.Preprocessing` turns it into that model's
tensor inside the worker. A batch is ``{preprocessing key: tensor}``, so an old and a new model
reading different sizes or channels are fed from one decode of each image.

A row that cannot be read or decoded does not kill a worker with a traceback: the worker returns
the error as data and the consumer raises one :class:`~components.data.DataError` naming the item
and its URI, before anything downstream writes a byte.

The dataset version is a sha256 over the sorted manifest rows plus each object's ETag (S3) or
size (local), listed — not downloaded — so versioning a million-image manifest reads no pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hotswap.components.data import SPLITS, DataError
from hotswap.components.preprocess import Preprocessing
from torch.utils.data import DataLoader, Dataset

GALLERY_COLUMNS = ("item_id", "uri")
OPTIONAL_COLUMNS = ("label", "split")


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ImageManifest:
    """Validated manifest rows; labels and splits may be empty (a gallery needs neither)."""

    frame: pd.DataFrame
    base_dir: str = "."
    name: str = "manifest"
    class_names: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def item_ids(self) -> np.ndarray:
        return self.frame["item_id"].to_numpy(dtype=str)

    @property
    def labelled(self) -> bool:
        return bool(len(self.frame)) and bool((self.frame["label"] != "").all())

    @property
    def labels(self) -> np.ndarray:
        """int64 per row: the index of its label in ``class_names``, −1 where unlabelled."""
        index = {c: i for i, c in enumerate(self.class_names)}
        return np.array([index.get(x, -1) for x in self.frame["label"]], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rows(self, mask: np.ndarray | Sequence[int], name: str | None = None) -> ImageManifest:
        frame = self.frame.iloc[np.flatnonzero(mask) if np.asarray(mask).dtype == bool else list(mask)]
        return ImageManifest(frame.reset_index(drop=True), self.base_dir, name or self.name, self.class_names)

    def split(self, split: str) -> ImageManifest:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        subset = self.rows(self.frame["split"].to_numpy() == split, f"{self.name}/{split}")
        if not len(subset):
            raise DataError(f"{self.name}: no rows in split {split!r}")
        return subset

    def with_ids(self, item_ids: Sequence[Any] | np.ndarray) -> ImageManifest:
        """Rows for ``item_ids`` in that order (KeyError-free: unknown ids raise DataError)."""
        position = pd.Index(self.frame["item_id"])
        wanted = np.asarray(item_ids).astype(str)
        rows = position.get_indexer(wanted)
        if (rows < 0).any():
            missing = wanted[rows < 0][:5].tolist()
            raise DataError(f"{self.name}: no row for item id(s) {missing}")
        return self.rows(rows.tolist(), self.name)


def manifest_from_frame(
    frame: pd.DataFrame,
    source: str = "manifest",
    base_dir: str | Path = ".",
    require_labels: bool = True,
    require_splits: bool = True,
    class_names: Sequence[str] | None = None,
) -> ImageManifest:
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
    return ImageManifest(frame.reset_index(drop=True), str(base_dir), source, tuple(labels))


def read_image_manifest(
    path: str | Path, require_labels: bool = True, require_splits: bool = True
) -> ImageManifest:
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
    return manifest_from_frame(frame, str(path), path.parent, require_labels, require_splits)


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
        """Per URI its ETag (S3, from listings: no object is downloaded) or size (local); None = absent."""
        out: list[str | None] = [None] * len(uris)
        by_bucket: dict[str, list[tuple[int, str]]] = {}
        for i, uri in enumerate(uris):
            if uri.startswith("s3://"):
                bucket, key = split_s3_uri(uri)
                by_bucket.setdefault(bucket, []).append((i, key))
            else:
                path = Path(uri) if Path(uri).is_absolute() else Path(base_dir) / uri
                out[i] = str(path.stat().st_size) if path.is_file() else None
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


def manifest_version(manifest: ImageManifest, reader: ObjectReader) -> str:
    """sha256 over the sorted rows (id, uri, label, split, ETag or size); names missing objects."""
    frame = manifest.frame.sort_values("item_id", kind="stable")
    stats = reader.stats(frame["uri"].tolist(), manifest.base_dir)
    absent = [
        f"{i} ({u})" for i, u, s in zip(frame["item_id"], frame["uri"], stats, strict=True) if s is None
    ]
    if absent:
        raise DataError(f"{manifest.name}: {len(absent)} object(s) do not exist, e.g. item {absent[0]}")
    digest = hashlib.sha256()
    for row, stat in zip(frame.itertuples(index=False), stats, strict=True):
        digest.update("\x1f".join((row.item_id, row.uri, row.label, row.split, str(stat))).encode() + b"\x1e")
    return digest.hexdigest()[:16]


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


# --------------------------------------------------------------------------- the DataLoader


class ManifestImages(Dataset):
    """Row i → (i, {preprocessing key: float32 CHW}, error text or None); errors travel as data."""

    def __init__(self, manifest: ImageManifest, reader: ObjectReader, transforms: Sequence[Preprocessing]):
        self.ids = manifest.frame["item_id"].tolist()
        self.uris = manifest.frame["uri"].tolist()
        self.base_dir = manifest.base_dir
        self.name = manifest.name
        self.reader = reader
        self.transforms = {t.key: t for t in transforms}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, dict[str, np.ndarray] | None, str | None]:
        where = f"{self.name}: item {self.ids[i]!r} ({self.uris[i]})"
        try:
            data = self.reader.read(self.uris[i], self.base_dir)
        except DataError as exc:
            return i, None, f"{where}: {exc}"
        except Exception as exc:  # botocore NoSuchKey, OSError: one line naming the item
            code = (
                getattr(exc, "response", {}).get("Error", {}).get("Code")
                if hasattr(exc, "response")
                else None
            )
            return i, None, f"{where}: cannot be read ({code or type(exc).__name__}: {exc})"
        try:
            image = decode_uint8(data, where)
            return i, {key: t(image, where) for key, t in self.transforms.items()}, None
        except (DataError, ValueError) as exc:
            return i, None, str(exc)


def _collate(items: list[tuple[int, dict[str, np.ndarray] | None, str | None]]) -> dict[str, Any]:
    errors = [e for _, _, e in items if e is not None]
    index = torch.tensor([i for i, _, _ in items], dtype=torch.int64)
    if errors:
        return {"index": index, "views": None, "errors": errors}
    keys = items[0][1].keys()
    views = {k: torch.from_numpy(np.stack([v[k] for _, v, _ in items])) for k in keys}
    return {"index": index, "views": views, "errors": []}


@dataclass(frozen=True)
class LoaderConfig:
    """DataLoader knobs (documented defaults in settings ``data.loader``)."""

    batch_size: int = 64
    workers: int = 2
    prefetch_factor: int = 4
    # Workers start from a clean forkserver process, not by forking the caller: a caller that runs
    # Prefect (event loop, API client threads) or a thread pool cannot be forked safely.
    start_method: str = "forkserver"


DEFAULT_LOADER = LoaderConfig()


def make_loader(
    manifest: ImageManifest,
    transforms: Sequence[Preprocessing],
    reader: ObjectReader,
    config: LoaderConfig = DEFAULT_LOADER,
    shuffle: bool = False,
    seed: int = 0,
    persistent: bool = False,
) -> DataLoader:
    """A torch DataLoader over the manifest: worker processes fetch, decode and transform."""
    workers = config.workers
    return DataLoader(
        ManifestImages(manifest, reader, transforms),
        batch_size=config.batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
        multiprocessing_context=_context(config.start_method) if workers > 0 else None,
    )


def _context(method: str) -> Any:
    import multiprocessing

    if method == "forkserver":
        multiprocessing.set_forkserver_preload(["hotswap.components.streaming"])
    return multiprocessing.get_context(method)


def batches(loader: DataLoader) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(row indices, views) per batch; the first unreadable item raises DataError naming it."""
    for batch in loader:
        if batch["errors"]:
            more = f" (and {len(batch['errors']) - 1} more in this batch)" if len(batch["errors"]) > 1 else ""
            raise DataError(batch["errors"][0] + more)
        yield batch["index"].numpy(), batch["views"]


@torch.no_grad()
def extract_manifest(
    models: Sequence[Any],
    manifest: ImageManifest,
    reader: ObjectReader,
    config: LoaderConfig = DEFAULT_LOADER,
    device: str = "cpu",
) -> list[np.ndarray]:
    """Features of every row for each model, in one pass over the images (float32 [N, d] each)."""
    outputs = [np.empty((len(manifest), m.embedding_dim), dtype=np.float32) for m in models]
    states = [m.training for m in models]
    for m in models:
        m.to(device).eval()
    try:
        loader = make_loader(manifest, [m.preprocessing for m in models], reader, config)
        for rows, views in batches(loader):
            on_device = {k: v.to(device) for k, v in views.items()}
            for out, m in zip(outputs, models, strict=True):
                out[rows] = m.embed(on_device).cpu().numpy()
    finally:
        for m, state in zip(models, states, strict=True):
            m.train(state)
    return outputs


class ManifestItemSource:
    """A backfill :class:`~components.backfill.ItemSource` over a manifest: each call streams only
    the asked ids (one shard) through a DataLoader, in the model's own preprocessing."""

    def __init__(
        self,
        manifest: ImageManifest,
        preprocessing: Preprocessing,
        reader: ObjectReader,
        config: LoaderConfig = DEFAULT_LOADER,
    ) -> None:
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.reader = reader
        self.config = config

    def images(self, item_ids: np.ndarray) -> np.ndarray:
        subset = self.manifest.with_ids(item_ids)
        p = self.preprocessing
        out = np.empty((len(subset), p.in_channels, p.image_size, p.image_size), dtype=np.float32)
        # one batch or less is read in this process: starting workers would cost more than it saves
        workers = (
            0
            if len(subset) <= self.config.batch_size
            else min(self.config.workers, -(-len(subset) // self.config.batch_size))
        )
        config = LoaderConfig(
            self.config.batch_size, workers, self.config.prefetch_factor, self.config.start_method
        )
        for rows, views in batches(make_loader(subset, [p], self.reader, config)):
            out[rows] = views[p.key].numpy()
        return out
