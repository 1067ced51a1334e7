"""Tasks that switch the live gallery (CURRENT) and check what is live after a switch.

The switch runs inside a Prefect transaction: on rollback CURRENT goes back to the version that
was live before, so a failed promotion never leaves the gallery and the champion out of step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hotswap.components.core.settings import HotswapSettings
from hotswap.tasks.context import gallery_items, gallery_store, registry
from prefect import task
from prefect.cache_policies import NONE
from prefect.transactions import Transaction, get_transaction

_PREVIOUS = "previous_gallery"
_SETTINGS = "settings"


@task(name="publish-gallery", task_run_name="switch the live gallery to {gallery_version}", cache_policy=NONE)
def publish_gallery(settings: HotswapSettings, gallery_version: str) -> str | None:
    """Point CURRENT at ``gallery_version`` (written last, checksums verified); undone on rollback."""
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    txn = get_transaction()
    if txn is not None:
        txn.set(_PREVIOUS, live)
        txn.set(_SETTINGS, settings.model_dump(mode="json"))
    if live != gallery_version:
        galleries.publish(
            settings.gallery_name, gallery_version, expected_current=live, verify_checksums=True
        )
    return live


@publish_gallery.on_rollback
def _restore_gallery(transaction: Transaction) -> None:
    settings = HotswapSettings.model_validate(transaction.get(_SETTINGS))
    gallery_store(settings).set_current(settings.gallery_name, transaction.get(_PREVIOUS))


@task(
    name="check-live-gallery", task_run_name="health-check v{version} on {gallery_version}", cache_policy=NONE
)
def check_live_gallery(settings: HotswapSettings, version: str, gallery_version: str) -> dict[str, Any]:
    """After a switch: the champion and CURRENT are what we set, and the live index answers."""
    from hotswap.components.data.loading import model_inputs
    from hotswap.components.gallery.search import GallerySearcher
    from hotswap.components.models.training import extract_features
    from hotswap.components.quant.index import index_from_bytes

    reg = registry(settings)
    galleries = gallery_store(settings)
    champion = reg.resolve("champion").version
    live = galleries.read_current(settings.gallery_name)
    if champion != version or live != gallery_version:
        raise RuntimeError(
            f"switch did not take: champion is v{champion} (expected v{version}), "
            f"CURRENT is {live} (expected {gallery_version})"
        )
    manifest = galleries.load_manifest(settings.gallery_name, live)
    index_bytes = galleries.load_index(settings.gallery_name, live)
    if index_bytes is None:
        raise RuntimeError(f"live gallery {live} has no index")
    index = index_from_bytes(index_bytes)
    if index.ntotal != manifest.num_items:
        raise RuntimeError(f"live index holds {index.ntotal} items, the manifest {manifest.num_items}")
    # as served: a mixed live gallery must carry a calibration for the new champion, or this raises
    searcher = GallerySearcher.from_version(galleries, settings.gallery_name, live, version)
    model = reg.load_model(version)
    items = gallery_items(settings)  # a few gallery images as queries, in the model's own preprocessing
    sample = items.subset(np.arange(min(8, len(items))))
    probe = extract_features(model, model_inputs(sample, model.preprocessing), device=settings.torch_device)
    _, found = searcher.search(probe, k=min(5, index.ntotal))
    if (found == "").any():
        raise RuntimeError(f"live index {live} returned empty results")
    return {
        "champion": champion,
        "gallery_version": live,
        "items": int(index.ntotal),
        "calibration": searcher.calibration_source,
    }
