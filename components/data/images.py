"""One interface for every data source: rows (item_id, uri, label, split) and decoded images by row.

A :class:`ImageSource` is the whole collection as it is now: a bundled set held in memory, an
image folder, or a manifest of local paths or ``s3://`` objects. It gives each row's decoded
image as uint8 HWC (RGB, or one channel for grayscale data) and nothing else: what a model reads
of that image (size, channels, normalisation) is the model's own preprocessing
(components/data/preprocess.py), so an old and a new model can read the same item differently.

An :class:`ImageSet` is a selection of a source's rows (a split, some classes, some ids) with
its labels as integers into ``class_names``. Every step of the lifecycle (training, validation,
the decision, the backfill) takes an ImageSet and never asks where the pixels live: extraction and
training batches come from components/data/loading.py, which reads the source in the caller's
process (sources held in memory keep their decoded views cached) or through DataLoader workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
ROW_COLUMNS = ("item_id", "uri", "label", "split")


class DataError(ValueError):
    """Bad input data: the message names the input and what is wrong with it."""


class ImageSource:
    """Rows plus decoded images by row position; subclasses say where the pixels come from.

    ``frame`` holds ``item_id, uri, label, split`` as strings ("" where a gallery row has no label
    or split). ``class_names`` are the sorted distinct labels. ``in_memory`` sources return whole
    preprocessed views from a cache (:meth:`views`); the others are read item by item, in the
    caller's process or in DataLoader workers (the source must pickle).
    """

    in_memory: bool = False

    def __init__(self, frame: pd.DataFrame, name: str, class_names: Sequence[str] | None = None) -> None:
        self.frame = frame.reset_index(drop=True)
        self.name = name
        labels = sorted(set(self.frame["label"]) - {""})
        self.class_names: tuple[str, ...] = tuple(class_names) if class_names is not None else tuple(labels)
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = np.fromiter(
            (index.get(x, -1) for x in self.frame["label"]), dtype=np.int64, count=len(self.frame)
        )

    def __len__(self) -> int:
        return len(self.frame)

    def image(self, position: int) -> np.ndarray:
        """The decoded image of one row: uint8 [H, W, C], C = 1 or 3."""
        raise NotImplementedError

    def describe(self, position: int) -> str:
        """How an error names a row: the source, the item id and where it was read from."""
        uri = self.frame["uri"].iat[position]
        item = self.frame["item_id"].iat[position]
        return f"{self.name}: item {item!r}" + (f" ({uri})" if uri else "")

    def stamps(self, positions: np.ndarray) -> list[str | None]:
        """Per row a content stamp for the data version (a hash, an ETag or a size); None = absent."""
        raise NotImplementedError

    def views(self, preprocessing: Any) -> np.ndarray:
        """Every row through ``preprocessing`` (float32 [N, C, H, W]); only for in-memory sources."""
        raise DataError(f"{self.name}: not held in memory; read it through components/data/loading.py")

    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the first row: what a first model reads unless told otherwise."""
        if not len(self):
            raise DataError(f"{self.name}: no rows")
        return tuple(self.image(0).shape)  # type: ignore[return-value]

    def all(self) -> ImageSet:
        return ImageSet.of(self)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Rows of one :class:`ImageSource`; every array shares the first dimension.

    ``labels`` index ``class_names`` (−1 = unlabelled); :func:`~components.data.classes.to_head_labels`
    replaces them by classifier-head rows for training. ``positions`` are the rows in the source.
    """

    source: ImageSource
    positions: np.ndarray  # int64 [N]: row in the source
    labels: np.ndarray  # int64 [N]
    item_ids: np.ndarray  # str [N]
    splits: np.ndarray  # str [N]
    class_names: tuple[str, ...] = field(default=())
    name: str = "dataset"

    @classmethod
    def of(cls, source: ImageSource) -> ImageSet:
        frame = source.frame
        return cls(
            source=source,
            positions=np.arange(len(frame), dtype=np.int64),
            labels=source.labels.copy(),
            item_ids=frame["item_id"].to_numpy(dtype=str),
            splits=frame["split"].to_numpy(dtype=str),
            class_names=source.class_names,
            name=source.name,
        )

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    @property
    def uris(self) -> np.ndarray:
        return self.source.frame["uri"].to_numpy(dtype=str)[self.positions]

    @property
    def labelled(self) -> bool:
        return bool(len(self)) and bool((self.labels >= 0).all())

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a manifest: item_id, uri, label (its name, "" if none), split."""
        names = np.array([*self.class_names, ""], dtype=object)
        return pd.DataFrame(
            {
                "item_id": self.item_ids,
                "uri": self.uris,
                "label": names[self.labels] if self.class_names else self.labels.astype(str),
                "split": self.splits,
            }
        )

    @property
    def version(self) -> str:
        """A content hash of the rows and their images (pixel hashes, ETags or file hashes; nothing is
        decoded for object sources). The same rows and contents always give the same version."""
        order = np.argsort(self.item_ids, kind="stable")
        stamps = self.source.stamps(self.positions[order])
        absent = [i for i, s in zip(self.item_ids[order], stamps, strict=True) if s is None]
        if absent:
            where = self.source.describe(int(self.positions[order][stamps.index(None)]))
            raise DataError(f"{self.name}: {len(absent)} object(s) do not exist, e.g. {where}")
        names = np.array([*self.class_names, ""], dtype=object)
        labels = names[self.labels] if self.class_names else self.labels.astype(str)
        digest = hashlib.sha256()
        for i, stamp in zip(order, stamps, strict=True):
            row = (self.item_ids[i], str(labels[i]), self.splits[i], str(stamp))
            digest.update("\x1f".join(row).encode() + b"\x1e")
        return digest.hexdigest()[:16]

    def subset(self, mask: np.ndarray | Sequence[int], name: str | None = None) -> ImageSet:
        """Rows where ``mask`` is true (or the given integer indices, in that order)."""
        mask = np.asarray(mask)
        rows = np.flatnonzero(mask) if mask.dtype == bool else mask.astype(np.int64)
        return replace(
            self,
            positions=self.positions[rows],
            labels=self.labels[rows],
            item_ids=self.item_ids[rows],
            splits=self.splits[rows],
            name=name or self.name,
        )

    def split(self, name: str) -> ImageSet:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.subset(self.splits == name, name=f"{self.name}/{name}")

    def with_classes(self, classes: Iterable[int]) -> ImageSet:
        """Only items whose label is in ``classes`` (label indices; they keep their numbering)."""
        return self.subset(np.isin(self.labels, np.asarray(list(classes), dtype=np.int64)), self.name)

    def with_class_names(self, names: Iterable[str]) -> ImageSet:
        """Only items of the named classes (names not in ``class_names`` select nothing)."""
        index = {c: i for i, c in enumerate(self.class_names)}
        return self.with_classes([index[n] for n in names if n in index])

    def with_ids(self, item_ids: Sequence[Any] | np.ndarray) -> ImageSet:
        """Rows for ``item_ids`` in that order; unknown ids are one error naming them."""
        wanted = np.asarray(item_ids).astype(str)
        rows = pd.Index(self.item_ids).get_indexer(wanted)
        if (rows < 0).any():
            raise DataError(f"{self.name}: no row for item id(s) {wanted[rows < 0][:5].tolist()}")
        return self.subset(rows)

    def native_inputs(self) -> np.ndarray:
        """The rows as float32 [N, C, H, W] in [0, 1] at their own size and channels.

        Only for sources held in memory (tests, benchmarks, small probes); every lifecycle pass
        reads through components/data/loading.py in the model's own preprocessing.
        """
        from hotswap.components.data.preprocess import builtin_preprocessing

        height, _, channels = self.source.image_shape()
        return self.source.views(builtin_preprocessing(height, channels))[self.positions]

    def decoded(self, index: int) -> np.ndarray:
        """The decoded image (uint8 HWC) of row ``index`` of this set."""
        return self.source.image(int(self.positions[index]))


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
