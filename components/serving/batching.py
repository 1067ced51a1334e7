"""Micro-batching: concurrent queries within a small window share one forward pass and one search.

A forward pass of a small net or a faiss scan costs nearly the same for 1 query as for 32, so a
worker thread takes the first waiting query, waits up to ``max_wait_s`` for more (never past
``batch_size`` queries), and answers them together. Queries are grouped by the pair they read
at their start and by k: a batch never mixes two pairs, so batching cannot break the rule that
one answer comes wholly from one (model, gallery) pair, even while a swap happens.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from hotswap.components.serving.pair import LivePair

log = logging.getLogger("hotswap.serve")


class QueueFullError(RuntimeError):
    """More queries are waiting than the service accepts (``serve.queue_limit``)."""


@dataclass(frozen=True)
class Answer:
    """Top-k of some queries, from the one pair that answered them."""

    model_version: str
    gallery_version: str
    scores: np.ndarray  # float32 [n, k]
    item_ids: np.ndarray  # str [n, k]


@dataclass
class _Job:
    pair: LivePair
    images: np.ndarray | None  # [n, C, H, W], or None for raw embeddings
    embeddings: np.ndarray | None  # [n, d]
    k: int
    future: Future

    @property
    def rows(self) -> int:
        return len(self.images if self.images is not None else self.embeddings)


class QueryBatcher:
    """One worker thread answering queued queries in batches (see the module docstring)."""

    def __init__(
        self,
        batch_size: int = 32,
        max_wait_s: float = 0.002,
        queue_limit: int = 4096,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1 or max_wait_s < 0 or queue_limit < 1:
            raise ValueError(f"{batch_size=} must be ≥ 1, {max_wait_s=} ≥ 0, {queue_limit=} ≥ 1")
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_limit)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hotswap-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(
        self,
        pair: LivePair,
        *,
        images: np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
        k: int,
    ) -> Future:
        """Queue queries (images or raw embeddings) for ``pair``; the future gives an :class:`Answer`."""
        if (images is None) == (embeddings is None):
            raise ValueError("give exactly one of images or embeddings")
        job = _Job(pair, images, embeddings, int(k), Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"{self._queue.maxsize} queries are already waiting; try again") from None
        return job.future

    # worker ------------------------------------------------------------------

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, rows = [first], first.rows
        deadline = time.perf_counter() + self.max_wait_s
        while rows < self.batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += job.rows
        return jobs, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping = self._collect(first)
            groups: dict[tuple[int, int], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((id(job.pair), job.k), []).append(job)
            for group in groups.values():
                self._answer(group)
            if stopping:
                return

    def _answer(self, jobs: list[_Job]) -> None:
        pair, k = jobs[0].pair, jobs[0].k
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            image_jobs = [job for job in live if job.images is not None]
            features: dict[int, np.ndarray] = {}
            if image_jobs:
                embedded = pair.embed(np.concatenate([job.images for job in image_jobs]))
                offsets = np.cumsum([0] + [job.rows for job in image_jobs])
                for job, a, b in zip(image_jobs, offsets[:-1], offsets[1:], strict=True):
                    features[id(job)] = embedded[a:b]
            queries = np.concatenate(
                [features[id(job)] if job.images is not None else job.embeddings for job in live]
            )
            scores, ids = pair.search(queries, k)
            if self.on_batch is not None:
                self.on_batch(len(queries))
        except Exception as exc:  # one bad batch must not stop the worker; each caller gets the error
            log.exception("batch of %d queries on model v%s failed", len(live), pair.model_version)
            for job in live:
                job.future.set_exception(exc)
            return
        start = 0
        for job in live:
            stop = start + job.rows
            job.future.set_result(
                Answer(pair.model_version, pair.gallery_version, scores[start:stop], ids[start:stop])
            )
            start = stop
