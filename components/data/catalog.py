"""The data a hotswap home works on, from its settings: the labelled data and the gallery.

- :func:`labelled_data`: ``data.source`` (every row), what models train, validate and gate on;
  :func:`current_data` restricts it to ``data.classes`` (a class-incremental chain grows that).
- :func:`gallery_items`: the gallery's own manifest (``gallery.manifest``: item_id, uri; labels
  optional), or, when none is set, the ``data.gallery_split`` of the whole data source (the
  bundled sets' test split). Gallery items are never restricted to ``data.classes``: the gallery
  holds items of every class from the start, and a backfill must find all of them.

Every lifecycle step reads images through these sets, whatever the source (components/data/).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from hotswap.components.data.classes import check_classes, is_integer_label
from hotswap.components.data.images import DataError, ImageSet
from hotswap.components.data.objects import ObjectSource
from hotswap.components.data.sources import open_manifest, open_source

if TYPE_CHECKING:  # data.loading imports torch; status reads the catalog without it
    from hotswap.components.data.loading import LoaderConfig


def _keep_decoded(settings: object, items: ImageSet) -> ImageSet:
    """Object sources keep up to ``stream.cache_mb`` of decoded images for repeated passes."""
    if isinstance(items.source, ObjectSource):
        items.source.keep_decoded(settings.stream.cache_mb << 20)  # type: ignore[attr-defined]
    return items


def labelled_data(settings: object) -> ImageSet:
    """Every row of ``data.source``."""
    data = settings.data  # type: ignore[attr-defined]
    return _keep_decoded(
        settings,
        open_source(
            data.source,
            seed=data.split_seed,
            endpoint_url=settings.s3_endpoint_url,  # type: ignore[attr-defined]
            synthetic_size=data.image_size or 28,
        ),
    )


def current_data(settings: object) -> ImageSet:
    """The labelled data restricted to ``data.classes`` (by label name) when set."""
    data = labelled_data(settings)
    classes = check_classes("data.classes", settings.data.classes, data.class_names)  # type: ignore[attr-defined]
    return data if classes is None else data.with_class_names(classes)


def gallery_items(settings: object) -> ImageSet:
    """The gallery's own manifest, or the gallery split of the whole data source."""
    manifest = settings.gallery.manifest  # type: ignore[attr-defined]
    if manifest:
        return _keep_decoded(settings, open_manifest(manifest, settings.s3_endpoint_url))  # type: ignore[attr-defined]
    whole = labelled_data(settings)
    return whole.split(settings.data.gallery_split)  # type: ignore[attr-defined]


def loader_config(settings: object) -> LoaderConfig:
    from hotswap.components.data.loading import LoaderConfig

    s = settings.stream  # type: ignore[attr-defined]
    return LoaderConfig(batch_size=s.batch_size, workers=s.workers, prefetch_factor=s.prefetch_factor)


def find_item(settings: object, item_id: str) -> ImageSet:
    """One item by id: from the gallery manifest first, then the labelled data."""
    for items in (gallery_items, labelled_data):
        try:
            found = items(settings)
        except DataError:
            continue
        rows = np.flatnonzero(found.item_ids == str(item_id))
        if len(rows):
            return found.subset(rows[:1])
    raise DataError(f"item id {item_id!r} is in neither the gallery nor data source {settings.data.source!r}")  # type: ignore[attr-defined]


def labels_by_id(settings: object) -> dict[str, str]:
    """Label names of items (for display only): the labelled data, then the gallery's own labels."""
    labels: dict[str, str] = {}
    for items in (labelled_data, gallery_items):
        try:
            found = items(settings)
        except DataError:
            continue
        names = np.array([*found.class_names, ""], dtype=object)
        labels.update(
            {i: n for i, n in zip(found.item_ids.tolist(), names[found.labels].tolist(), strict=True) if n}
        )
    return labels


def bootstrap_classes(settings: object, data: ImageSet) -> list[str] | None:
    """The label names the first model trains on (None = all).

    The default list (the digits 0–4) only applies to data whose labels are integers; other data
    trains its first model on every class unless ``data.bootstrap_classes`` is set explicitly.
    """
    section = settings.data  # type: ignore[attr-defined]
    wanted = section.bootstrap_classes
    explicit = "bootstrap_classes" in section.model_fields_set
    if wanted is not None and not explicit and not all(is_integer_label(c) for c in data.class_names):
        return None
    return check_classes("data.bootstrap_classes", wanted, data.class_names)
