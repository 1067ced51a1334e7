"""One lifecycle run per gallery: a Prefect global concurrency limit named after the gallery.

refresh, promote (after the reviewer answered), backfill and bootstrap all change what a gallery
serves; two of them interleaving could publish a gallery built for a model that is no longer
the champion. Each takes one slot of ``hotswap-lifecycle-<gallery>`` (limit 1) for its whole
critical section. The limit is created on the server when missing, so the rule holds without a
set-up step; an operator may create it beforehand (``prefect gcl create … --limit 1``). A second
run waits up to ``ops.lock_timeout_seconds`` and then fails with a message naming the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from hotswap.components.settings import HotswapSettings
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
    """Hold the gallery's lifecycle slot while ``what`` runs (waits for a run holding it)."""
    name = ensure_lifecycle_limit(settings)
    logger = get_run_logger()
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
