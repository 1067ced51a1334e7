"""The one call every reader of live state makes first: repair what a killed command left behind.

``hotswap status``, ``search``, ``refresh``, ``promote`` and ``backfill`` (and a query service)
call :func:`recover_live_state` before they read the champion or CURRENT. It

- finishes or undoes an unfinished switch (components/gallery/switch_intent.py), so champion and CURRENT
  are always one whole pair;
- marks FAILED the MLflow runs left RUNNING by processes of this host that no longer exist.

Most of the time there is nothing to repair, and finding that out must stay cheap: ``status`` and
``search`` answer in about the time of ``--help``. So the check reads the intent from the store
and the RUNNING runs from the SQLite registry directly (components/registry/sqlite_reader.py);
MLflow is imported only when there is something to repair, or when the registry is not a local
SQLite database.

It never interferes with a command that is still alive: if another live process holds the
gallery's lease, an intent is that command's switch in progress and is left alone (the message
says so). A caller that does not hold the lease takes it for the few writes a repair needs.
"""

from __future__ import annotations

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.gallery.keys import intent_key
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.registry.sqlite_reader import open_reader


def recover_live_state(settings: HotswapSettings, *, holding_lease: bool = False) -> list[str]:
    """Repair an interrupted switch and dead runs; returns what was done, one sentence each."""
    if settings.registry_absent:  # nothing was ever recorded: nothing to repair, and no DB to create
        return []
    store = open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url)
    gallery = settings.gallery_name
    reader = open_reader(settings)
    if reader is not None and not store.exists(intent_key(gallery)) and not reader.dead_runs():
        return []  # nothing to repair: found without importing MLflow or numpy
    from hotswap.components.gallery.lease import GalleryLease, LeaseHeldError, live_holder
    from hotswap.components.gallery.switch_intent import read_intent, recover_switch
    from hotswap.components.gallery.versions import GalleryStore
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    galleries = GalleryStore(store)

    registry = ModelRegistry.from_settings(settings)
    messages: list[str] = []
    if read_intent(galleries, gallery) is not None:
        if holding_lease:
            done = recover_switch(registry, galleries, gallery)
        else:
            holder = live_holder(store, gallery)
            if holder is not None:
                messages.append(
                    f"a switch on gallery {gallery!r} is in progress ({holder.describe()}, "
                    f"started {holder.started()}); showing the state before it"
                )
                done = None
            else:
                try:
                    with GalleryLease(store, gallery, "recover", ttl_seconds=settings.lease_ttl_seconds):
                        done = recover_switch(registry, galleries, gallery)
                except LeaseHeldError:  # a command started in between; it recovers first itself
                    done = None
        if done:
            messages.append(done)
    if registry.client.get_experiment_by_name(registry.experiment_name) is not None:
        marked = registry.fail_dead_runs()
        if marked:
            messages.append(
                f"marked {len(marked)} MLflow run(s) FAILED that a killed process had left RUNNING: "
                + ", ".join(marked)
            )
    return messages
