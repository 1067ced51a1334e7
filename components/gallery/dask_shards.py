"""Shard jobs on a Dask cluster: this machine orchestrates, the workers only run shards.

Why it is built this way (docs/operations.md, "Scale-out on a Dask cluster"):

- The driver opens its own ``distributed.Client`` and submits one plain function per shard. No
  task waits on a worker for other tasks, so one worker is enough to finish and N workers share
  the shards.
- Nothing large or fragile travels from the driver. A task carries a :class:`ShardSpec`: the store
  (it pickles as a URI and options), ids and row slices, the codebooks (kilobytes) and two
  :class:`Resource` references, the model (loaded from the registry by version) and the gallery's
  item source (the manifest, read by the worker). A worker builds each once and keeps it
  (:func:`cached`), so the model is loaded once per worker, not once per shard.
- Nothing is scattered: a worker that dies takes no state with it. The scheduler reruns its
  shards elsewhere; a shard written and verified before the death is skipped by the rerun
  (components/gallery/shard_jobs.py), so every item is written exactly once and a rerun of the
  whole backfill converges byte for byte.
- Ctrl-C on the driver cancels the submitted tasks and closes the client within seconds; the
  staged version stays resumable.

Task keys are deterministic per shard and per driver run (``<prefix>-<shard>-<run token>``), so
the Dask dashboard names each shard, and a later run never picks up an earlier run's results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from hotswap.components.core.errors import ServiceError
from hotswap.components.gallery.shard_jobs import (
    BackfillContext,
    BackfillError,
    ShardJob,
    ShardResult,
    process_shard,
)
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.quant.dpq import DPQCodebooks

T = TypeVar("T")
ShardCallback = Callable[[ShardResult], None]

#: How many built resources (models, item sources, shard contexts) one worker process keeps.
CACHE_SIZE = 8
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.RLock()  # a shard context builds the model inside its own build


@dataclass(frozen=True)
class Resource(Generic[T]):
    """Something a worker builds once and keeps: ``build`` (picklable: a module-level function or
    a ``functools.partial`` of one) runs the first time ``key`` is asked for in a process."""

    key: str
    build: Callable[[], T]

    def get(self) -> T:
        return cached(self.key, self.build)


def cached(key: str, build: Callable[[], T]) -> T:
    """The value kept under ``key`` in this process, built on first use (least recently used go)."""
    with _cache_lock:  # a worker with several threads builds a model once, not once per thread
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        value = build()
        _cache[key] = value
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return value


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker embeds images: the model and items by reference, batch, device, torch threads."""

    model: Resource[Any] | None
    items: Resource[Any] | None
    batch_size: int = 256
    device: str = "cpu"
    torch_threads: int = 1

    def apply_threads(self) -> None:
        import torch

        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    def torch_device(self) -> str:
        """The worker's own device: 'auto' picks its GPU when it has one."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ShardSpec:
    """What a shard task needs besides its job; small, picklable, the same for every shard of a run."""

    galleries: GalleryStore
    gallery: str
    version: str
    source_version: str | None
    codebooks: DPQCodebooks | None
    setup: WorkerSetup
    token: str  # the driver run: the key under which a worker keeps this run's shard context
    transforms: dict[str, Any] | None = None  # mode 'transform': h_v per provenance model (small MLPs)


def _context(spec: ShardSpec) -> BackfillContext:
    manifest = (
        spec.galleries.load_manifest(spec.gallery, spec.source_version) if spec.source_version else None
    )
    setup = spec.setup
    return BackfillContext(
        spec.galleries, spec.gallery, spec.version, spec.source_version, manifest,
        setup.model.get() if setup.model is not None else None, spec.codebooks,
        setup.items.get() if setup.items is not None else None, setup.batch_size, setup.torch_device(),
        transforms=spec.transforms,
    )  # fmt: skip


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not on a worker (a test calling the function directly)
        return ""


def run_shard(spec: ShardSpec, job: ShardJob) -> ShardResult:
    """The task a worker runs for one shard: build it unless it is already written and verified."""
    spec.setup.apply_threads()
    ctx = cached(f"context:{spec.token}", lambda: _context(spec))
    if ctx.model is not None:
        ctx.model.eval()
    return dataclasses.replace(process_shard(ctx, job), worker=_worker_address())


def embed_items(setup: WorkerSetup, item_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """The task a worker runs for one chunk of a gallery sync: features of ``item_ids``."""
    from hotswap.components.models.training import extract_features

    setup.apply_threads()
    model = setup.model.get() if setup.model is not None else None
    items = setup.items.get() if setup.items is not None else None
    if model is None or items is None:
        raise BackfillError("embedding on the cluster needs a model and an item source")
    model.eval()
    features = extract_features(
        model, items.images(np.asarray(item_ids)), batch_size=setup.batch_size, device=setup.torch_device()
    )
    return np.asarray(features, dtype=np.float32), _worker_address()


class DaskShards:
    """Runs shard jobs from this machine as tasks on the Dask cluster at ``address``.

    Pass it as the ``executor`` of components/gallery/backfill.py: ``run_shard_jobs`` hands it the
    jobs (:meth:`run_jobs`). ``shares`` counts, after a run, how many shards each worker did.
    """

    def __init__(
        self,
        address: str,
        setup: WorkerSetup,
        *,
        retries: int = 2,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        self.address = address
        self.setup = setup
        self.retries = retries
        self.connect_timeout_seconds = connect_timeout_seconds
        self.shares: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"DaskShards({self.address!r})"

    def client(self) -> Any:
        """A client of the scheduler; a scheduler that does not answer is a :class:`ServiceError`."""
        from distributed import Client

        try:
            return Client(self.address, timeout=self.connect_timeout_seconds, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ServiceError(
                f"Dask scheduler {self.address} did not answer within {self.connect_timeout_seconds:g} s "
                f"({type(exc).__name__}): start it (`dask scheduler`) or fix dask.address, then rerun "
                "(a rerun resumes finished shards)"
            ) from exc

    def run_jobs(
        self, ctx: BackfillContext, jobs: Sequence[ShardJob], on_shard: ShardCallback | None = None
    ) -> list[ShardResult]:
        """Every job as a task; ``on_shard`` sees each result here, on the driver, as it completes."""
        token = uuid.uuid4().hex[:12]
        spec = ShardSpec(
            ctx.galleries,
            ctx.gallery,
            ctx.version,
            ctx.source_version,
            ctx.codebooks,
            self.setup,
            token,
            ctx.transforms or None,
        )
        prefix = f"shard-{ctx.gallery}-{ctx.version}"

        def submit(client: Any, job: ShardJob) -> Any:
            key = f"{prefix}-{job.shard:06d}-{token}"
            return client.submit(run_shard, spec, job, key=key, retries=self.retries)

        results = self._drive(submit, jobs, on_shard)
        return sorted(results, key=lambda r: r.shard)

    def embed(self, item_ids: np.ndarray, chunk: int) -> np.ndarray:
        """Features of ``item_ids`` (float32, in their order), ``chunk`` ids per task."""
        ids = np.asarray(item_ids)
        if chunk < 1:
            raise BackfillError(f"chunk must be at least 1, got {chunk}")
        token = uuid.uuid4().hex[:12]
        pieces = [ids[a : a + chunk] for a in range(0, len(ids), chunk)]
        out: dict[int, np.ndarray] = {}

        def submit(client: Any, n: int) -> Any:
            key = f"embed-{n:06d}-{token}"
            return client.submit(embed_items, self.setup, pieces[n], key=key, retries=self.retries)

        def keep(n: int, value: tuple[np.ndarray, str]) -> None:
            out[n] = value[0]
            self.shares[value[1]] += 1

        self._drive(submit, list(range(len(pieces))), None, keep)
        if not pieces:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate([out[n] for n in range(len(pieces))])

    def _drive(
        self,
        submit: Callable[[Any, Any], Any],
        items: Sequence[Any],
        on_shard: ShardCallback | None,
        keep: Callable[[Any, Any], None] | None = None,
    ) -> list[Any]:
        from distributed import as_completed

        self.shares.clear()
        client = self.client()
        futures: dict[Any, Any] = {}
        try:
            with _remembered_interrupts() as interrupted:
                futures = {submit(client, item): item for item in items}
                results = []
                for future in as_completed(list(futures), loop=client.loop):
                    interrupted()
                    value = future.result()
                    if keep is not None:
                        keep(futures[future], value)
                        continue
                    self.shares[value.worker] += 1
                    results.append(value)
                    if on_shard is not None:
                        on_shard(value)
                        interrupted()  # the progress call may have swallowed a Ctrl-C
                return results
        except BaseException:
            # Ctrl-C or a failed shard: nothing left running for a driver that is gone; shards
            # already written stay written, so the rerun resumes
            if futures:
                with contextlib.suppress(Exception):  # the scheduler may be gone already
                    client.cancel(list(futures), force=True)
            raise
        finally:
            client.close(timeout=5)


@contextlib.contextmanager
def _remembered_interrupts() -> Iterator[Callable[[], None]]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered; the check it yields raises
    again. A progress callback's call into Prefect (a sync-to-async bridge) can absorb the
    KeyboardInterrupt that lands inside it, and the driver would otherwise carry on to the end."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # signals reach the main thread only
        return
    seen: list[int] = []
    previous = signal.getsignal(signal.SIGINT)

    def remember(signum: int, frame: Any) -> None:
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def check() -> None:
        if seen:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, remember)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
