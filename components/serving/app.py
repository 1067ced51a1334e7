"""HTTP in front of :class:`LiveService`: search by image, by item id or by raw embedding; health; metrics.

Endpoints (JSON unless said otherwise):

- ``POST /search/image?k=10``: the request body is the image file itself (PNG/JPEG bytes), decoded
  and transformed by the live model's own preprocessing (components/data/query_image.py);
- ``POST /search/item``: ``{"item_id": "...", "k": 10}``, an item of the configured dataset;
- ``POST /search/embedding``: ``{"model_version": "2", "embedding": [...], "k": 10}``; a version
  that is not live gets 409 (its features do not belong to the live gallery's space);
- ``GET /health`` (503 until a pair is live), ``GET /live`` (model and gallery versions),
  ``GET /metrics`` (Prometheus text format).

Every search answer carries ``model_version`` and ``gallery_version``: the one pair that
answered it. Bad input is a 4xx with one line in ``detail`` naming the input and what is wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from hotswap.components.data.images import DataError
from hotswap.components.data.query_image import query_pixels
from hotswap.components.serving.batching import Answer, QueueFullError
from hotswap.components.serving.metrics import CONTENT_TYPE
from hotswap.components.serving.service import (
    LiveService,
    NotLiveError,
    UnknownItemError,
    VersionNotLiveError,
)
from pydantic import BaseModel, Field

_STATUS = {
    NotLiveError: (503, "unavailable"),
    QueueFullError: (503, "unavailable"),
    VersionNotLiveError: (409, "conflict"),
    UnknownItemError: (404, "not_found"),
    DataError: (400, "bad_request"),
    ValueError: (400, "bad_request"),
}


class ItemQuery(BaseModel):
    item_id: str = Field(min_length=1)
    k: int | None = None


class EmbeddingQuery(BaseModel):
    model_version: str = Field(min_length=1)
    embedding: list[float] = Field(min_length=1)
    k: int | None = None


def _answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "model_version": answer.model_version,
        "gallery_version": answer.gallery_version,
        "results": [
            {"item_id": str(item), "score": float(score)}
            for item, score in zip(answer.item_ids[0], answer.scores[0], strict=True)
        ],
    }


def create_app(service: LiveService, manage_service: bool = True) -> FastAPI:
    """The FastAPI app; with ``manage_service`` its lifespan starts and stops the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            if manage_service:
                await asyncio.to_thread(service.stop)

    app = FastAPI(title="hotswap query service", lifespan=lifespan)
    metrics = service.metrics

    async def answer(endpoint: str, work: Callable[[], Awaitable[Answer]]) -> Response:
        start = time.perf_counter()
        try:
            result = _answer_json(await work())
        except Exception as exc:
            status, outcome = next(
                (code for kind, code in _STATUS.items() if isinstance(exc, kind)), (500, "error")
            )
            metrics.observe(endpoint, outcome, time.perf_counter() - start)
            detail = str(exc) if status != 500 else f"internal error ({type(exc).__name__}: {exc})"
            return JSONResponse({"detail": detail}, status_code=status)
        metrics.observe(endpoint, "ok", time.perf_counter() - start)
        return JSONResponse(result)

    @app.post("/search/image")
    async def search_image(request: Request, k: int | None = Query(None)) -> Response:
        async def work() -> Answer:
            pair = service.live_pair()  # read once: this request is answered by this pair only
            k_ = service.check_k(k)
            data = await request.body()
            if not data:
                raise ValueError("the request body must be the query image (PNG or JPEG bytes)")
            if len(data) > service.config.max_upload_bytes:
                raise ValueError(
                    f"query image is {len(data)} bytes, more than serve.max_upload_bytes = "
                    f"{service.config.max_upload_bytes}"
                )
            # decoded and transformed exactly as the live model's gallery items were
            images = query_pixels(pair.model, data, where="uploaded query image")
            return await asyncio.wrap_future(service.submit_images(pair, images, k_))

        return await answer("image", work)

    @app.post("/search/item")
    async def search_item(query: ItemQuery) -> Response:
        async def work() -> Answer:
            pair = service.live_pair()
            k_ = service.check_k(query.k)
            image = service.item_image(query.item_id, pair)
            return await asyncio.wrap_future(service.submit_images(pair, image, k_))

        return await answer("item", work)

    @app.post("/search/embedding")
    async def search_embedding(query: EmbeddingQuery) -> Response:
        async def work() -> Answer:
            pair = service.live_pair()
            k_ = service.check_k(query.k)
            future = service.submit_embedding(pair, query.model_version, np.asarray(query.embedding), k_)
            return await asyncio.wrap_future(future)

        return await answer("embedding", work)

    @app.get("/health")
    async def health() -> Response:
        try:
            pair = service.live_pair()
        except NotLiveError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse(
            {"status": "ok", "model_version": pair.model_version, "gallery_version": pair.gallery_version}
        )

    @app.get("/live")
    async def live() -> Response:
        pair = service.pair
        target = service.watcher.last_target
        return JSONResponse(
            {
                "model": service.settings.model_name,
                "gallery": service.settings.gallery_name,
                "live": pair.describe() if pair is not None else None,
                "model_version": pair.model_version if pair is not None else None,
                "gallery_version": pair.gallery_version if pair is not None else None,
                "target": None
                if target is None
                else {
                    "model_version": target.model_version,
                    "gallery_version": target.gallery_version,
                    "whole": target.whole,
                    "reason": target.reason,
                },
                "last_error": service.watcher.last_error,
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
