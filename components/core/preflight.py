"""Checks a command makes before it changes anything, so a failed command leaves no trace.

Each lifecycle step writes something (a registered version, an alias, a decision, a staged
gallery). A problem found half-way would leave those behind, so what can be known up front is
checked here first: the settings that would be ignored, the data against the live gallery, the
data against DPQ's needs. Every check raises :class:`InputError` with one line naming the input,
what is wrong, and what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hotswap.components.core.errors import InputError
from hotswap.components.core.settings import HotswapSettings

if TYPE_CHECKING:  # type hints only: the CLI checks a backfill request before torch is imported
    import numpy as np
    from hotswap.components.data.images import ImageSet
    from hotswap.components.models.backbones import EmbeddingModel


def _explicit(section: object, name: str) -> bool:
    """Whether the user set ``name`` (file, environment or override), not just the default."""
    return name in getattr(section, "model_fields_set", set())


def check_dpq_training_size(settings: HotswapSettings, train_items: int, what: str) -> None:
    """DPQ's k-means needs at least K training features per codebook."""
    k = settings.dpq.n_codewords
    if train_items < k:
        raise InputError(
            f"{what} has {train_items} training images, fewer than dpq.n_codewords = {k} (DPQ's K needs at "
            f"least K features): use more data (data.source) or a smaller dpq.n_codewords (a power of two ≤ "
            f"{_power_of_two_below(train_items)})"
        )


def _power_of_two_below(n: int) -> int:
    return 1 << max(1, (max(n, 2)).bit_length() - 1)


def check_bootstrap(settings: HotswapSettings, data: ImageSet) -> None:
    """Before v1 is registered: its classes exist and its training split can train DPQ codebooks."""
    train = data.split("train")
    from hotswap.components.data.catalog import bootstrap_classes

    classes = bootstrap_classes(settings, data)
    if classes is not None:
        train = train.with_class_names(classes)
    check_dpq_training_size(settings, len(train), f"data source {settings.data.source!r} (bootstrap classes)")


def check_refresh(
    settings: HotswapSettings,
    champion: EmbeddingModel,
    champion_version: str,
    data: ImageSet,
    gallery_ids: np.ndarray,
    gallery: ImageSet | None = None,
) -> None:
    """Before the challenger is trained or any alias moves.

    ``gallery`` is the gallery's own manifest. When the refresh does not sync the live gallery
    with it first (``gallery.sync_on_refresh`` off), every live item must be readable from it.
    """
    wanted = settings.training.embedding_dim
    if _explicit(settings.training, "embedding_dim") and wanted != champion.embedding_dim:
        raise InputError(
            f"training.embedding_dim = {wanted} cannot apply to a refresh: a compatible challenger shares "
            f"champion v{champion_version}'s embedding space (d = {champion.embedding_dim}); "
            f"remove the setting or set it to {champion.embedding_dim}"
        )
    if gallery is not None and not settings.gallery.sync_on_refresh:
        known = set(gallery.item_ids.tolist())
        missing = [str(i) for i in gallery_ids if str(i) not in known]
        if missing:
            raise InputError(
                f"the gallery manifest ({gallery.name}) lacks {len(missing)} of the live gallery's "
                f"{len(gallery_ids)} items (e.g. {missing[:3]}): point gallery.manifest (or data.source) at "
                "the data the gallery was built from, or turn gallery.sync_on_refresh on to drop them"
            )
    check_splits(settings, data)
    check_dpq_training_size(settings, len(data.split("train")), f"data source {settings.data.source!r}")


def check_splits(settings: HotswapSettings, data: ImageSet) -> None:
    """The splits a refresh validates, gates and selects on must hold rows."""
    for setting in ("validation_split", "gate_split"):
        split = getattr(settings.data, setting)
        if not (data.splits == split).any():
            raise InputError(
                f"data.{setting} = {split!r}: data source {settings.data.source!r} has no rows in that "
                f"split (it has {sorted(set(data.splits.tolist()))}); add rows to it or choose another split"
            )


def check_gallery_removals(settings: HotswapSettings, removed: list[str], live_items: int) -> None:
    """Items only leave the live gallery through its own manifest (``gallery.manifest``).

    Without one, the gallery is the data source's gallery split, and live items missing from it
    mean the data source is not the data the gallery was built from (a wrong path, another
    dataset): syncing would silently drop them, so that is refused in one line.
    """
    if removed and not settings.gallery.manifest:
        raise InputError(
            f"data source {settings.data.source!r} lacks {len(removed)} of the live gallery's {live_items} "
            f"items (e.g. {removed[:3]}): its item ids or labels do not match the data the gallery was "
            "built from; point data.source at that dataset (or a superset of it), or name the gallery's "
            "own manifest in gallery.manifest (a sync then drops the items it no longer lists)"
        )


BACKFILL_MODES = ("requantize", "transform", "partial", "full")


def check_backfill_request(mode: str, fraction: float | None) -> None:
    """A standalone backfill's mode and fraction, before any flow starts.

    ``transform`` maps stored features by the maps its refresh trained (no image read); with a
    fraction it re-extracts that share, most uncertain first, and maps the rest.
    """
    if mode not in BACKFILL_MODES:
        raise InputError(f"--mode {mode!r} is not a backfill mode; use one of {', '.join(BACKFILL_MODES)}")
    if mode == "partial":
        if fraction is None or not 0.0 < fraction < 1.0:
            raise InputError(f"--fraction {fraction}: a partial backfill needs 0 < fraction < 1")
    elif mode == "transform":
        if fraction is not None and not 0.0 <= fraction < 1.0:
            raise InputError(f"--fraction {fraction}: a transform backfill re-extracts 0 <= fraction < 1")
    elif fraction is not None:
        raise InputError(f"--fraction {fraction} only applies to --mode partial or transform")
