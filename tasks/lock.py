"""One lifecycle run per gallery: the gallery's lease in the store, and nothing else.

refresh, promote (after the reviewer answered), backfill, bootstrap and gallery-sync all change
what a gallery serves; two of them interleaving could publish a gallery built for a model that is
no longer the champion. Each holds the gallery's lease (components/gallery/lease.py: a conditional write
in the store, renewed while the run lives, taken over once it expires) for its whole critical
section. A second run waits up to ``ops.lock_timeout_seconds`` and then fails naming the holder.

The lease is the same lock every CLI command takes, so a worker-run refresh and a refresh typed
at a terminal never interleave. A flow started by a CLI command that already holds the lease
runs under it. A lease held by another flow of the same process (a nested or a concurrent flow
run) is held, not shared: the second run waits like any other. A Prefect global concurrency
limit used to be taken as well; it serialised nothing the lease did not, and a killed holder
kept its slot until the server's repossessor freed it, so it is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.gallery.lease import GalleryLease, LeaseHeldError, held_in_this_process
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.lifecycle.status_snapshot import leave_snapshot
from prefect import get_run_logger


class GalleryBusyError(RuntimeError):
    """Another lifecycle run held the gallery for longer than this run was willing to wait."""


@contextmanager
def lifecycle_lock(settings: HotswapSettings, what: str) -> Iterator[None]:
    """Hold the gallery's lease while ``what`` runs (waits for a run holding it)."""
    logger = get_run_logger()
    store = open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url)
    if held_in_this_process(store, settings.gallery_name):
        logger.info(
            "%s: this command holds gallery %r's lease (one run per gallery)", what, settings.gallery_name
        )
        yield
        return
    lease = GalleryLease(
        store,
        settings.gallery_name,
        f"prefect {what}",
        ttl_seconds=settings.lease_ttl_seconds,
        wait_seconds=settings.ops.lock_timeout_seconds or 10 * 365 * 24 * 3600.0,
        on_wait=lambda message: logger.info("%s: %s", what, message),
    )
    try:
        lease.acquire()
    except LeaseHeldError as exc:
        raise GalleryBusyError(
            f"gallery {settings.gallery_name!r} is busy: another lifecycle run held its lease for more "
            f"than {settings.ops.lock_timeout_seconds:g} s; {what} did not start (retry later, or raise "
            f"ops.lock_timeout_seconds): {exc}"
        ) from exc
    logger.info("%s: holds gallery %r's lease (one run per gallery)", what, settings.gallery_name)
    try:
        yield
    except BaseException:
        lease.release()
        raise
    lease.release()
    # a run that held the lease itself (a worker's) leaves the status of the state it ended in;
    # under a command's lease the command does it once the lease is released (flows/cli_prepare.py)
    leave_snapshot(settings)
