"""Prometheus metrics of the query service, in a registry of its own (one per service instance).

Names (text format at ``GET /metrics``):

- ``hotswap_serve_queries_total{endpoint, outcome}``: outcome is ok, bad_request, not_found,
  conflict (a raw embedding for a model version that is not live), unavailable or error;
- ``hotswap_serve_query_latency_seconds{endpoint}``: histogram of request latency;
- ``hotswap_serve_batch_queries``: histogram of how many queries shared one forward pass/search;
- ``hotswap_serve_live_pair{model_version, gallery_version}``: 1 for the pair answering now;
- ``hotswap_serve_live_model_version``: the live model version as a number (0 when none);
- ``hotswap_serve_swaps_total``, ``hotswap_serve_failed_loads_total``;
- ``hotswap_serve_last_load_seconds``: how long building the last swapped-in pair took.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queries = Counter(
            "hotswap_serve_queries",
            "Queries answered, by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "hotswap_serve_query_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "hotswap_serve_batch_queries",
            "Queries per forward pass / search",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.live_pair = Gauge(
            "hotswap_serve_live_pair",
            "1 for the (model, gallery) pair answering queries",
            ["model_version", "gallery_version"],
            registry=r,
        )
        self.live_model = Gauge(
            "hotswap_serve_live_model_version", "Live model version (0: none)", registry=r
        )
        self.swaps = Counter("hotswap_serve_swaps", "Pairs swapped in (the first load counts)", registry=r)
        self.failed_loads = Counter(
            "hotswap_serve_failed_loads", "Pairs that failed to load or to pass the health check", registry=r
        )
        self.load_seconds = Gauge(
            "hotswap_serve_last_load_seconds",
            "Build + health-check time of the last swapped-in pair",
            registry=r,
        )

    def set_live(self, model_version: str, gallery_version: str, load_seconds: float) -> None:
        self.live_pair.clear()
        self.live_pair.labels(model_version=model_version, gallery_version=gallery_version).set(1)
        self.live_model.set(float(model_version) if model_version.isdigit() else 0.0)
        self.load_seconds.set(load_seconds)
        self.swaps.inc()

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.queries.labels(endpoint=endpoint, outcome=outcome).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
