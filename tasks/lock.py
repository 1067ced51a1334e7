"""One lifecycle run per gallery: a Prefect global concurrency limit named after the gallery.

refresh, promote (after the reviewer answered), backfill and bootstrap all change what a gallery
serves; two of them interleaving could publish a gallery built for a model that is no longer
the champion. Each takes one slot of ``hotswap-lifecycle-<gallery>`` (limit 1) for its whole
critical section. The limit is created on the server when missing, so the rule holds without a
set-up step; an operator may create it beforehand (``prefect gcl create … --limit 1``). A second
run waits up to ``ops.lock_timeout_seconds`` and then fails with a message naming the limit.

The run also holds the gallery's lease in the store (components/lease.py), the lock every CLI
command takes, so a worker-run refresh and a refresh typed at a terminal never interleave. A
flow started by a CLI command that already holds that lease needs no slot: the lease serialises
it, and a killed CLI frees its lease at once, where a slot it held would stay taken until the
server's repossessor service revokes it (an ephemeral or test server runs no such service).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from hotswap.components.lease import GalleryLease, LeaseHeldError, held_in_this_process
from hotswap.components.settings import HotswapSettings
from hotswap.components.store import open_store
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


class GalleryBusyError(RuntimeError):
    """Another lifecycle run held the gallery's slot for longer than this run was willing to wait."""


def ensure_lifecycle_limit(settings: HotswapSettings) -> str:
    """Create the gallery's global concurrency limit (limit 1) unless it exists; returns its name."""
    name = settings.lifecycle_limit_name
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # created concurrently by the other run
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextmanager
def lifecycle_lock(settings: HotswapSettings, what: str) -> Iterator[None]:
    """Hold the gallery's lease and lifecycle slot while ``what`` runs (waits for a run holding them)."""
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
            f"gallery {settings.gallery_name!r} is busy: another lifecycle run held it (lease and slot "
            f"{settings.lifecycle_limit_name!r}) for more than {settings.ops.lock_timeout_seconds:g} s; "
            f"{what} did not start (retry later, or raise ops.lock_timeout_seconds): {exc}"
        ) from exc
    try:
        with _lifecycle_slot(settings, what, logger):
            yield
    finally:
        lease.release()


@contextmanager
def _lifecycle_slot(settings: HotswapSettings, what: str, logger) -> Iterator[None]:
    name = ensure_lifecycle_limit(settings)
    logger.info("%s: waiting for the lifecycle slot %r (one run per gallery)", what, name)
    acquired = False
    try:
        with concurrency(
            name,
            occupy=1,
            timeout_seconds=settings.ops.lock_timeout_seconds,
            lease_duration=settings.ops.lock_lease_seconds,
            strict=True,
        ):
            acquired = True
            logger.info("%s: holds the lifecycle slot %r", what, name)
            yield
    except TimeoutError as exc:
        if acquired:  # a timeout inside the work itself is not ours to rename
            raise
        raise GalleryBusyError(
            f"gallery {settings.gallery_name!r} is busy: another lifecycle run held {name!r} for more "
            f"than {settings.ops.lock_timeout_seconds:g} s; {what} did not start (retry later, or raise "
            "ops.lock_timeout_seconds)"
        ) from exc
