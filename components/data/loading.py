"""Every pass over images: batches of each model's own view, from any source.

A batch is ``(rows, {preprocessing key: float32 tensor})``: an old and a new model that read
different sizes or channels are fed from one decode of each image, and each picks its own view
(components/data/preprocess.py ``select_view``). Where the batches come from is the source's
business:

- a source held in memory (components/data/bundled.py) hands out slices of its cached views;
- any other source is read through a torch DataLoader whose worker processes fetch, decode and
  transform (forkserver start: a caller that runs Prefect or a thread pool cannot be forked
  safely); a pass of at most one batch is read in the calling process.

A row that cannot be read or decoded does not kill a worker with a traceback: the worker returns
the error as data and the consumer raises one :class:`~components.data.images.DataError` naming
the item and its URI, before anything downstream writes a byte.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hotswap.components.data.images import DataError, ImageSet, ImageSource
from hotswap.components.data.preprocess import Preprocessing
from torch.utils.data import DataLoader, Dataset

Batch = tuple[np.ndarray, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class LoaderConfig:
    """DataLoader knobs (settings ``stream``: workers, batch size, read-ahead)."""

    batch_size: int = 64
    workers: int = 2
    prefetch_factor: int = 4
    start_method: str = "forkserver"


DEFAULT_LOADER = LoaderConfig()


class SourceImages(Dataset):
    """Row i → (i, {preprocessing key: float32 CHW} or None, error text or None)."""

    def __init__(self, source: ImageSource, positions: np.ndarray, transforms: Sequence[Preprocessing]):
        self.source = source
        self.positions = positions
        self.transforms = {t.key: t for t in transforms}

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, dict[str, np.ndarray] | None, str | None]:
        position = int(self.positions[i])
        try:
            image = self.source.image(position)
            where = self.source.describe(position)
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


def _context(method: str) -> Any:
    import multiprocessing

    if method == "forkserver":
        multiprocessing.set_forkserver_preload(["hotswap.components.data.loading"])
    return multiprocessing.get_context(method)


def make_loader(
    data: ImageSet,
    transforms: Sequence[Preprocessing],
    config: LoaderConfig = DEFAULT_LOADER,
    shuffle: bool = False,
    seed: int = 0,
    persistent: bool = False,
) -> DataLoader:
    """A torch DataLoader over the rows of ``data``: workers fetch, decode and transform."""
    workers = config.workers if len(data) > config.batch_size else 0
    return DataLoader(
        SourceImages(data.source, data.positions, transforms),
        batch_size=config.batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
        multiprocessing_context=_context(config.start_method) if workers > 0 else None,
    )


def loader_batches(loader: DataLoader) -> Iterator[Batch]:
    """(row indices, views) per batch; the first unreadable item raises DataError naming it."""
    for batch in loader:
        if batch["errors"]:
            more = f" (and {len(batch['errors']) - 1} more in this batch)" if len(batch["errors"]) > 1 else ""
            raise DataError(batch["errors"][0] + more)
        yield batch["index"].numpy(), batch["views"]


class Batches:
    """Re-iterable batches of ``data`` (one iteration = one epoch), in its rows' order or shuffled.

    Shuffled epochs draw from one seeded generator, so the same seed gives the same batches.
    A DataLoader over an object source keeps its workers between epochs.
    """

    def __init__(
        self,
        data: ImageSet,
        transforms: Sequence[Preprocessing],
        config: LoaderConfig = DEFAULT_LOADER,
        shuffle: bool = False,
        seed: int = 0,
        persistent: bool = False,
    ) -> None:
        if not len(data):
            raise DataError(f"{data.name}: no rows")
        self.data = data
        self.transforms = list({t.key: t for t in transforms}.values())
        self.config = config
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = (
            None
            if data.source.in_memory
            else make_loader(data, self.transforms, config, shuffle, seed, persistent)
        )

    def __iter__(self) -> Iterator[Batch]:
        if self.loader is not None:
            yield from loader_batches(self.loader)
            return
        views = {t.key: torch.from_numpy(self.data.source.views(t)) for t in self.transforms}
        positions = torch.from_numpy(self.data.positions)
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for begin in range(0, n, self.config.batch_size):
            rows = order[begin : begin + self.config.batch_size]
            at = positions[rows]
            yield rows.numpy(), {key: view[at] for key, view in views.items()}


@torch.no_grad()
def embed(
    models: Sequence[Any], data: ImageSet, config: LoaderConfig = DEFAULT_LOADER, device: str = "cpu"
) -> list[np.ndarray]:
    """Features of every row of ``data`` for each model, in one pass (float32 [N, d] each).

    Each model reads its own preprocessing of the same decoded images; eval mode, no gradient.
    """
    outputs = [np.empty((len(data), m.embedding_dim), dtype=np.float32) for m in models]
    if not len(data):
        return outputs
    states = [m.training for m in models]
    for m in models:
        m.to(device).eval()
    try:
        for rows, views in Batches(data, [m.preprocessing for m in models], config):
            on_device = {k: v.to(device) for k, v in views.items()}
            for out, m in zip(outputs, models, strict=True):
                out[rows] = m.embed(on_device).cpu().numpy()
    finally:
        for m, state in zip(models, states, strict=True):
            m.train(state)
    return outputs


def model_inputs(
    data: ImageSet, preprocessing: Preprocessing, config: LoaderConfig = DEFAULT_LOADER
) -> np.ndarray:
    """The rows of ``data`` as one model reads them: float32 [N, C, H, W] (use for small samples)."""
    out = np.empty(
        (len(data), preprocessing.in_channels, preprocessing.image_size, preprocessing.image_size),
        dtype=np.float32,
    )
    if not len(data):
        return out
    for rows, views in Batches(data, [preprocessing], config):
        out[rows] = views[preprocessing.key].numpy()
    return out


class SourceItemSource:
    """The backfill's item source: the gallery rows' images by id, in one model's preprocessing.

    Every call reads only the asked ids (one shard) through the data source, so the same object
    serves a thread pool here and a worker elsewhere (it pickles: the source carries its reader,
    not a client).
    """

    def __init__(
        self, gallery: ImageSet, preprocessing: Preprocessing, config: LoaderConfig = DEFAULT_LOADER
    ) -> None:
        self.gallery = gallery
        self.preprocessing = preprocessing
        self.config = config
        self.reads = 0  # images read through this object (a transform must read none)

    def images(self, item_ids: np.ndarray) -> np.ndarray:
        subset = self.gallery.with_ids(np.asarray(item_ids).astype(str))
        self.reads += len(subset)
        return model_inputs(subset, self.preprocessing, self.config)
