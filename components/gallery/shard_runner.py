"""Running shard jobs: inline, on a thread pool, on any executor, or on a Dask cluster.

Parallelism: shards are independent jobs. By default they run on a thread pool (torch and numpy
release the GIL, and I/O overlaps compute); any executor with ``submit`` whose futures have
``result()`` works. An executor that runs whole job lists itself (``run_jobs``, e.g.
components/gallery/dask_shards.py ``DaskShards`` for a Dask cluster) gets the jobs as they are.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Sequence
from typing import Any

from hotswap.components.gallery.shard_jobs import (
    BackfillContext,
    BackfillError,
    ShardJob,
    ShardResult,
    process_shard,
)

ShardCallback = Callable[[ShardResult], None]


def run_shard_jobs(
    ctx: BackfillContext,
    jobs: Sequence[ShardJob],
    executor: Any | None = None,
    workers: int = 2,
    on_shard: ShardCallback | None = None,
) -> list[ShardResult]:
    """Run every job; ``on_shard`` sees each result as it completes (in the calling thread).

    If ``on_shard`` (or a job) raises, the jobs not yet started are cancelled and the error is
    re-raised: shards already written stay written, which is what makes the rerun cheap.
    ``executor=None`` uses a private thread pool of ``workers`` threads (1 runs inline).
    """
    if workers < 1:
        raise BackfillError(f"workers must be at least 1, got {workers}")
    if executor is None and workers == 1:
        results = []
        for job in jobs:
            result = process_shard(ctx, job)
            results.append(result)
            if on_shard is not None:
                on_shard(result)
        return results
    if executor is None:
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill") as pool:
            return _drive(pool, ctx, jobs, on_shard)
    return _drive(executor, ctx, jobs, on_shard)


def _drive(
    executor: Any, ctx: BackfillContext, jobs: Sequence[ShardJob], on_shard: ShardCallback | None
) -> list[ShardResult]:
    if hasattr(executor, "run_jobs"):  # it ships the jobs itself (a Dask cluster: DaskShards)
        return executor.run_jobs(ctx, jobs, on_shard)
    futures = [executor.submit(process_shard, ctx, job) for job in jobs]
    results: list[ShardResult] = []
    try:
        for future in cf.as_completed(futures):
            result = future.result()
            results.append(result)
            if on_shard is not None:
                on_shard(result)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return sorted(results, key=lambda r: r.shard)
