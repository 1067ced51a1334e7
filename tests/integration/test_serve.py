"""The query service over real HTTP: a promotion under load, a broken index, a rollback.

Real parts throughout: uvicorn on 127.0.0.1 (a free port), SQLite MLflow, the local gallery
store, faiss, trained nets, the switch and rollback flows on Prefect's test harness. Each answer
is checked against its own pair: its ids must come from the gallery version it names, and its
scores must equal that model's query embedding searched in that gallery's index, computed here
independently of the service.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import defaultdict

import httpx
import numpy as np
import pytest
from hotswap.components.data.objects import decode_uint8
from hotswap.components.models.training import extract_features
from hotswap.components.quant.index import index_from_bytes, search
from hotswap.components.serving.server import ServerThread
from hotswap.components.serving.service import LiveService
from PIL import Image

from tests.fixtures.serving import ServeHome, add_version

pytestmark = pytest.mark.slow

K = 5
CLIENTS = 4
MIN_REQUESTS = 20  # per client, before and around the promotion
AFTER_SWAP = 10  # per client, answers from the new pair before it stops
MAX_REQUESTS = 600  # per client: the load is bounded even if the service never followed
FOLLOW_WAIT_S = 120  # readiness wait for the watcher, not a limit on the test


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class Oracle:
    """What a pair must answer, computed directly from the registry's models and the store's indexes."""

    def __init__(self, home: ServeHome) -> None:
        self.home = home
        self._indexes: dict[str, object] = {}
        self._ids: dict[str, np.ndarray] = {}

    def gallery(self, version: str) -> tuple[object, np.ndarray]:
        if version not in self._indexes:
            g = self.home.galleries
            name = self.home.settings.gallery_name
            self._indexes[version] = index_from_bytes(g.load_index(name, version))
            self._ids[version] = g.load_arrays(name, version).ids.astype(str)
        return self._indexes[version], self._ids[version]

    def check(self, answer: dict, image: np.ndarray | bytes) -> None:
        """``image``: the model's input [C, H, W], or the encoded query as sent (read through the
        answering model's own preprocessing, as the service reads it)."""
        model = self.home.models[answer["model_version"]]
        if isinstance(image, bytes):
            image = model.preprocessing(decode_uint8(image, "query"))
        index, ids = self.gallery(answer["gallery_version"])
        got_ids = [hit["item_id"] for hit in answer["results"]]
        got_scores = np.array([hit["score"] for hit in answer["results"]])
        assert set(got_ids) <= set(ids), f"ids not in gallery {answer['gallery_version']}: {got_ids}"
        query = extract_features(model, image[None])
        direct = search(index, query, k=K + 5)
        direct_score = {ids[row]: score for row, score in zip(direct.ids[0], direct.scores[0], strict=True)}
        np.testing.assert_allclose(got_scores, direct.scores[0][:K], atol=1e-4)
        for item, score in zip(got_ids, got_scores, strict=True):
            assert abs(direct_score[item] - score) < 1e-4, (item, score, direct_score.get(item))


def _wait_live(client: httpx.Client, model_version: str, gallery_version: str) -> dict:
    deadline = time.monotonic() + FOLLOW_WAIT_S
    while time.monotonic() < deadline:
        live = client.get("/live").json()
        if (live["model_version"], live["gallery_version"]) == (model_version, gallery_version):
            return live
        time.sleep(0.05)
    raise AssertionError(f"service did not follow to v{model_version} + {gallery_version}: {live}")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not in /metrics")


@pytest.fixture(scope="module")
def served(serve_home: ServeHome):
    service = LiveService(serve_home.settings)
    with ServerThread(service) as server:
        yield service, server


def test_promotion_under_load_is_atomic_and_consistent(
    serve_home: ServeHome, served, prefect_harness: None
) -> None:
    from hotswap.flows.switch import switch_live

    service, server = served
    home, oracle = serve_home, Oracle(serve_home)
    client = httpx.Client(base_url=server.url, timeout=60)
    assert client.get("/health").json() == {"status": "ok", "model_version": "1", "gallery_version": "g1"}

    gallery_items = home.data.split("test")
    answers: list[tuple[int, int, dict, np.ndarray | bytes]] = []
    failures: list[str] = []
    sent = [0] * CLIENTS
    lock = threading.Lock()
    started = threading.Barrier(CLIENTS + 1)

    def load(worker: int) -> None:
        rng = np.random.default_rng(worker)
        new_answers = 0
        with httpx.Client(base_url=server.url, timeout=60) as http:
            started.wait()
            for n in range(MAX_REQUESTS):
                if n >= MIN_REQUESTS and new_answers >= AFTER_SWAP:
                    break
                sent[worker] += 1
                row = int(rng.integers(len(gallery_items)))
                if n % 2:
                    item = str(gallery_items.item_ids[row])
                    response = http.post("/search/item", json={"item_id": item, "k": K})
                    image = gallery_items.native_inputs()[row]
                else:
                    png = _png(gallery_items.native_inputs()[row])
                    response = http.post(f"/search/image?k={K}", content=png)
                    image = png
                with lock:
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text}")
                    else:
                        answers.append((worker, n, response.json(), image))
                        new_answers += response.json()["model_version"] == "2"

    threads = [threading.Thread(target=load, args=(w,)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    started.wait()
    while len(answers) < CLIENTS * MIN_REQUESTS // 4:  # promote once the load is well under way
        time.sleep(0.01)
    switched = switch_live(home.settings, "2", "g2")
    assert switched == {"champion": "2", "gallery_version": "g2"}
    for t in threads:
        t.join()

    assert not failures, failures[:3]
    assert len(answers) == sum(sent) and all(n < MAX_REQUESTS for n in sent), sent
    pairs = {(a["model_version"], a["gallery_version"]) for _, _, a, _ in answers}
    assert pairs <= {("1", "g1"), ("2", "g2")}, pairs  # never a mixed pair
    by_worker = defaultdict(list)
    for worker, n, answer, image in answers:
        oracle.check(answer, image)
        by_worker[worker].append((n, answer["model_version"]))
    for seen in by_worker.values():  # one swap: each client sees v1 answers, then only v2
        versions = [v for _, v in sorted(seen)]
        assert versions == sorted(versions), versions
    assert pairs == {("1", "g1"), ("2", "g2")}  # the load straddled the swap
    live = _wait_live(client, "2", "g2")
    assert live["live"]["health"]["self_queries"] > 0

    metrics = client.get("/metrics").text
    assert _metric(metrics, "hotswap_serve_swaps_total") == 2  # the first load and the promotion
    assert 'hotswap_serve_live_pair{gallery_version="g2",model_version="2"} 1.0' in metrics
    assert _metric(metrics, "hotswap_serve_live_model_version") == 2
    assert _metric(metrics, "hotswap_serve_failed_loads_total") == 0
    ok = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("hotswap_serve_queries_total{") and 'outcome="ok"' in line
    )
    assert ok >= sum(sent)


def test_raw_embedding_search_names_its_version(serve_home: ServeHome, served) -> None:
    service, server = served
    client = httpx.Client(base_url=server.url, timeout=60)
    live = client.get("/live").json()["model_version"]
    image = serve_home.data.split("test").native_inputs()[3]
    query = extract_features(serve_home.models[live], image[None])[0].tolist()
    answer = client.post("/search/embedding", json={"model_version": live, "embedding": query, "k": K})
    assert answer.status_code == 200
    Oracle(serve_home).check(answer.json(), image)
    stale = "1" if live != "1" else "2"
    refused = client.post("/search/embedding", json={"model_version": stale, "embedding": query, "k": K})
    assert refused.status_code == 409 and f"v{live} is live" in refused.json()["detail"]
    short = client.post("/search/embedding", json={"model_version": live, "embedding": query[:-1]})
    assert short.status_code == 400 and "values" in short.json()["detail"]
    assert client.post("/search/item", json={"item_id": "nope"}).status_code == 404
    assert client.post("/search/image", content=b"not an image").status_code == 400


def test_rollback_restores_the_previous_pair(serve_home: ServeHome, served, prefect_harness: None) -> None:
    from hotswap.flows.rollback import rollback

    service, server = served
    client = httpx.Client(base_url=server.url, timeout=60)
    _wait_live(client, "2", "g2")
    assert rollback(overrides=serve_home.overrides) == {"champion": "1", "gallery_version": "g1"}
    _wait_live(client, "1", "g1")
    image = serve_home.data.split("test").native_inputs()[7]
    answer = client.post(f"/search/image?k={K}", content=_png(image)).json()
    assert (answer["model_version"], answer["gallery_version"]) == ("1", "g1")
    Oracle(serve_home).check(answer, _png(image))
    aliases = serve_home.registry.aliases()
    assert (aliases["champion"], aliases["previous"]) == ("1", "2")


def test_broken_index_keeps_the_old_pair_serving(
    serve_home: ServeHome, served, caplog: pytest.LogCaptureFixture
) -> None:
    service, server = served
    home = serve_home
    client = httpx.Client(base_url=server.url, timeout=60)
    before = client.get("/live").json()
    old = (before["model_version"], before["gallery_version"])
    v3 = add_version(home, "small", seed=3, gallery_version="g3-broken", build_gallery=False)
    name = home.settings.gallery_name
    arrays = home.galleries.load_arrays(name, old[1])
    writer = home.galleries.begin_version(name, "g3-broken", model_version=v3, num_shards=1)
    writer.write_shard(0, arrays.ids, arrays.features, arrays.codes)
    writer.finalize(index_bytes=b"\x00corrupt index bytes\xff" * 8)
    # drive the watcher by hand from here on, deterministically: stopped before the switch, its
    # thread cannot load the broken version between the switch and the first manual poll
    service.watcher.stop()
    with caplog.at_level(logging.ERROR, logger="hotswap.serve"):
        home.registry.promote(v3)
        home.galleries.publish(name, "g3-broken")
        assert service.watcher.poll_once() == "failed"
        assert service.watcher.poll_once() == "failed-before"  # not retried at every poll
    lines = [
        r.getMessage() for r in caplog.records if r.name == "hotswap.serve" and r.levelno == logging.ERROR
    ]
    assert len(lines) == 1
    assert f"failed to load model v{v3} + gallery g3-broken" in lines[0]
    assert f"still serving model v{old[0]} + gallery {old[1]}" in lines[0]
    assert "index.faiss is broken" in lines[0]
    after = client.get("/live").json()
    assert (after["model_version"], after["gallery_version"]) == old
    assert "index.faiss is broken" in after["last_error"]
    image = home.data.split("test").native_inputs()[11]
    answer = client.post(f"/search/image?k={K}", content=_png(image)).json()
    assert (answer["model_version"], answer["gallery_version"]) == old
    metrics = client.get("/metrics").text
    assert _metric(metrics, "hotswap_serve_failed_loads_total") == 1


def test_a_half_moved_switch_is_waited_for(serve_home: ServeHome, served) -> None:
    """Alias moved, CURRENT not yet: the service keeps its pair until the two agree."""
    from hotswap.components.gallery.live_state import read_live_target

    service, server = served
    home = serve_home
    name = home.settings.gallery_name
    live = service.pair
    home.registry.promote("2")  # champion v2 names g2, CURRENT is still the broken g3
    target = read_live_target(home.registry, home.galleries, name)
    assert not target.whole and "belongs to gallery g2" in target.reason
    assert service.watcher.poll_once() == "waiting"
    assert service.pair is live
    home.galleries.publish(name, "g2")
    assert service.watcher.poll_once() == "swapped"
    assert (service.pair.model_version, service.pair.gallery_version) == ("2", "g2")


def test_live_target_and_rollback_target_without_records(
    serve_home: ServeHome, sqlite_tracking_uri: str
) -> None:
    """No gallery tag: a champion pairs with a gallery it built itself; no previous: nothing to roll back."""
    from hotswap.components.gallery.live_state import (
        NothingToRollBackError,
        read_live_target,
        rollback_target,
    )
    from hotswap.components.models.backbones import BackboneSpec, build_model
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    registry = ModelRegistry(sqlite_tracking_uri, "servetest-untagged")
    galleries, name = serve_home.galleries, "untagged"
    with pytest.raises(NothingToRollBackError, match="no 'previous' alias"):
        rollback_target(registry, galleries, name)
    model = build_model(BackboneSpec(arch="small", embedding_dim=8, num_classes=2), seed=0)
    version = registry.register(registry.log_training_run(model, dataset_version="none"))
    registry.promote(version)
    assert "has no CURRENT" in read_live_target(registry, galleries, name).reason
    for gallery_version, built_by in (("built-by-other", "999"), ("built-by-champion", version)):
        writer = galleries.begin_version(
            name, gallery_version, model_version=built_by, num_shards=1, arrays=("ids",)
        )
        writer.write_shard(0, np.array(["a", "b"]))
        writer.finalize()
    galleries.publish(name, "built-by-other")
    target = read_live_target(registry, galleries, name)
    assert not target.whole and "was built by v999" in target.reason
    galleries.publish(name, "built-by-champion")
    assert read_live_target(registry, galleries, name).whole
