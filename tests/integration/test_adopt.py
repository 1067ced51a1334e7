"""hotswap adopt on the real engine: the team's ResNet (random weights in safetensors) and its own
pre-extracted gallery features become v1 and the live gallery; a refresh then trains a different
architecture reading a different input size from the same S3 JPEGs, and a backfill streams them."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.images import DataError
from hotswap.components.data.loading import embed
from hotswap.components.data.objects import ObjectReader, decode_uint8, manifest_from_frame
from hotswap.components.gallery.provenance import feature_models
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.components.registry.records import TAG_KIND
from hotswap.tasks.context import gallery_store
from PIL import Image
from safetensors.torch import save_file

from tests.fixtures.images import S3ImageSet
from tests.fixtures.s3 import create_bucket, s3_client
from tests.fixtures.user_models import resnet

pytestmark = pytest.mark.usefixtures("prefect_harness")

D = 32
GALLERY = 200
TEAM_SPEC = {
    "arch": "tests.fixtures.user_models:resnet",
    "kwargs": {"widths": [8, 16], "out_dim": D},
    "projection": False,
    "embedding_dim": D,
    "image_size": 24,
    "channels": "RGB",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
NEW_MODEL = {
    "arch": "tests.fixtures.user_models:convnet",
    "kwargs": {"in_channels": 1, "width": 12},
    "image_size": 32,
    "channels": "L",
    "mean": [0.5],
    "std": [0.25],
}


@pytest.fixture(scope="module")
def adopted(
    prefect_harness, s3_images: S3ImageSet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from hotswap.flows.adopt import adopt
    from hotswap.flows.refresh import refresh

    root = tmp_path_factory.mktemp("adopt")
    torch.manual_seed(11)
    team = resnet(widths=[8, 16], out_dim=D).eval()
    save_file({k: v.contiguous() for k, v in team.state_dict().items()}, root / "team.safetensors")
    s3_images.training().to_parquet(root / "train.parquet")
    gallery = s3_images.gallery(GALLERY)
    gallery.to_parquet(root / "gallery.parquet")
    # the deployed system's features, extracted "long ago" from the images it stored
    from hotswap.components.data.preprocess import Preprocessing

    p = Preprocessing(image_size=24, channels="RGB", mean=(0.5,) * 3, std=(0.25,) * 3)
    with torch.no_grad():
        x = torch.from_numpy(np.stack([p(decode_uint8(s3_images.data[i])) for i in gallery["item_id"]]))
        feats = torch.nn.functional.normalize(team(x), dim=1).numpy()
    pd.DataFrame({"item_id": gallery["item_id"], "feature": list(feats)}).to_parquet(
        root / "features.parquet"
    )
    bucket = create_bucket(s3_images.endpoint, "adopt")
    overrides = {
        "home": str(root / "home"),
        "store_uri": f"s3://{bucket}/store",
        "s3_endpoint_url": s3_images.endpoint,
        "model_name": "adopted",
        "data": {"source": str(root / "train.parquet"), "validation_split": "val", "bootstrap_classes": None},
        "gallery": {"manifest": str(root / "gallery.parquet")},
        "stream": {"workers": 2, "batch_size": 60},
        "training": {"epochs": 1, "batch_size": 60, "embedding_dim": D, "new_model": NEW_MODEL},
        "dpq": {"epochs": 2, "n_blocks": 2, "n_codewords": 32, "kmeans_iters": 3},
        "decision": {"partial_fractions": [0.5], "timing_repeats": 1, "timing_sample": 32},
        "backfill": {"shard_size": 100, "workers": 2},
        "compat_search": {"max_trials": 1},  # the search runs on the adopted path too; one trial is enough
    }
    first = adopt(
        spec=TEAM_SPEC,
        weights=str(root / "team.safetensors"),
        gallery_features=str(root / "features.parquet"),
        overrides=overrides,
    )
    second = refresh(overrides=overrides, auto_promote=False)
    settings = HotswapSettings(**overrides)
    return {
        "first": first,
        "second": second,
        "settings": settings,
        "features": feats,
        "gallery": gallery,
        "images": s3_images,
    }


def test_adopt_registers_the_team_model_and_imports_its_gallery(adopted: dict[str, Any]) -> None:
    settings, first = adopted["settings"], adopted["first"]
    registry = ModelRegistry.from_settings(settings)
    assert first["version"] == "1" and registry.aliases()["champion"] == "1"
    model = registry.load_model("1")
    assert (
        model.spec.arch == TEAM_SPEC["arch"] and model.spec.image_size == 24 and model.spec.channels == "RGB"
    )
    assert model.spec.class_names == tuple(f"c{i}" for i in range(10))
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    assert live == first["gallery_version"] == "v1-adopted"
    arrays = galleries.load_arrays(settings.gallery_name, live)
    # the imported features are served as they were: nothing re-extracted
    np.testing.assert_allclose(arrays.features, adopted["features"], atol=1e-6)
    assert list(arrays.ids.astype(str)) == list(adopted["gallery"]["item_id"])
    assert arrays.codes is not None and galleries.load_index(settings.gallery_name, live) is not None
    report = first["report"]
    assert report["gallery_items"] == GALLERY and report["codebook_bits"] == 10
    assert 0 < report["classifier_train_accuracy"] <= 1 and set(report["self_test"]) == {
        "map",
        "top1",
        "top5",
    }
    runs = registry.client.search_runs([registry.experiment_id], f"tags.`{TAG_KIND}` = 'adopt'")
    assert len(runs) == 1
    assert (
        "re-extracted: none" in registry.run_artifact_bytes(runs[0].info.run_id, "adopt/report.md").decode()
    )
    # the adopted model itself reproduces the stored features from the S3 images
    sample = manifest_from_frame(
        adopted["gallery"].head(20),
        require_labels=False,
        require_splits=False,
        reader=ObjectReader(settings.s3_endpoint_url),
    )
    (again,) = embed([model], sample)
    np.testing.assert_allclose(again, adopted["features"][:20], atol=1e-5)


def _serve_settings(settings: HotswapSettings) -> HotswapSettings:
    """The adopted home's settings with a watcher that polls fast (a readiness wait, not a limit)."""
    fields = settings.model_dump(mode="json")
    fields["serve"] = {**fields["serve"], "poll_interval_s": 0.1, "retry_failed_s": 3600, "max_k": 1000}
    return HotswapSettings(**fields)


def test_image_search_over_http_and_cli_read_the_models_own_preprocessing(
    adopted: dict[str, Any], tmp_path: Path
) -> None:
    """An RGB model with mean/std: HTTP, the CLI's search and the model's own transform agree."""
    import httpx
    from hotswap.components.gallery.search import GallerySearcher
    from hotswap.components.lifecycle.search import search_live
    from hotswap.components.serving.server import ServerThread
    from hotswap.components.serving.service import LiveService

    settings, k = _serve_settings(adopted["settings"]), 8
    registry, galleries = ModelRegistry.from_settings(settings), gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    model = registry.load_model("1").eval()
    assert (model.preprocessing.channels, model.preprocessing.std) == ("RGB", (0.25, 0.25, 0.25))
    searcher = GallerySearcher.from_version(galleries, settings.gallery_name, live, "1")
    first = adopted["gallery"]["item_id"][3]
    queries = [(first, adopted["images"].data[first]), s3_images_item(adopted, GALLERY + 40)]
    with ServerThread(LiveService(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for item, jpeg in queries:
            # the model's own preprocessing, computed here: decode to uint8 HWC, then its transform
            own = model.preprocessing(decode_uint8(jpeg))[None]
            with torch.no_grad():
                scores, ids = searcher.search(model.embed(torch.from_numpy(own)).numpy(), k)
            answer = http.post(f"/search/image?k={k}", content=jpeg)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["model_version"], body["gallery_version"]) == ("1", live)
            assert [h["item_id"] for h in body["results"]] == list(ids[0].astype(str)), item
            np.testing.assert_allclose([h["score"] for h in body["results"]], scores[0], atol=1e-5)
            (tmp_path / f"{item}.jpg").write_bytes(jpeg)
            cli = search_live(adopted["settings"], image=tmp_path / f"{item}.jpg", k=k)
            assert [h.item_id for h in cli.results] == list(ids[0].astype(str)), item
            np.testing.assert_allclose([h.score for h in cli.results], scores[0], atol=1e-5)
            # what the service used to send (grayscale, channel repeated, no mean/std) ranks otherwise
            with Image.open(io.BytesIO(jpeg)) as img:
                plain = np.asarray(img.convert("L").resize((24, 24)), dtype=np.float32) / 255.0
            gray = np.repeat(plain[None, None], 3, axis=1)
            with torch.no_grad():
                wrong, _ = searcher.search(model.embed(torch.from_numpy(gray)).numpy(), k)
            assert np.abs(wrong[0] - scores[0]).max() > 1e-3


def s3_images_item(adopted: dict[str, Any], row: int) -> tuple[str, bytes]:
    """(item id, JPEG bytes) of a gallery-split image that is not in the adopted gallery."""
    frame, data = adopted["images"].frame, adopted["images"].data
    item = frame[frame["split"] == "gallery"]["item_id"].iloc[row]
    return item, data[item]


def test_refresh_trains_another_architecture_at_another_input_size(adopted: dict[str, Any]) -> None:
    settings, second = adopted["settings"], adopted["second"]
    registry = ModelRegistry.from_settings(settings)
    assert second["champion"] == "1" and second["challenger"] == "2" and not second["noop"]
    # the gallery manifest is the adopted gallery: nothing to sync before training
    assert second["gallery_sync"] is None
    # an adopted model goes through the same lifecycle: targets from the live gallery, as-served gate
    assert [(t["version"], t["champion"]) for t in second["targets"]] == [("1", True)]
    new = registry.load_model("2")
    assert new.spec.arch == NEW_MODEL["arch"] and (new.spec.image_size, new.spec.channels) == (32, "L")
    report = registry.load_report("2")
    assert report.old_version == "1" and {"old/old", "new/new", "new/old"} <= set(report.matrix)
    assert report.blessed == second["blessed"]
    served = report.served
    assert served is not None and (served.candidate_version, served.champion_version) == ("2", "1")
    assert served.gallery_version == "v1-adopted" and served.live_shares == {"1": 1.0}
    assert [t.version for t in served.targets] == ["1"]
    # the decision may be any mode, reject included (a challenger that is not blessed stays staged)
    assert second["decision"] in ("skip", "requantize", "partial", "full", "reject")
    assert registry.get_tags("2")["backfill.decision"] == second["decision"]


def test_backfill_streams_the_gallery_through_the_new_model(adopted: dict[str, Any]) -> None:
    from hotswap.flows.backfill import backfill

    settings = adopted["settings"]
    overrides = settings.model_dump(mode="json")
    live_before = gallery_store(settings).read_current(settings.gallery_name)
    result = backfill(overrides=overrides, mode="full", version="2", publish=True)
    galleries = gallery_store(settings)
    assert galleries.read_current(settings.gallery_name) == result["gallery_version"]
    arrays = galleries.load_arrays(settings.gallery_name, result["gallery_version"])
    assert set(feature_models(galleries, settings.gallery_name, result["gallery_version"])) == {"2"}
    new = ModelRegistry.from_settings(settings).load_model("2")
    sample = manifest_from_frame(
        adopted["gallery"].head(10),
        require_labels=False,
        require_splits=False,
        reader=ObjectReader(settings.s3_endpoint_url),
    )
    (expected,) = embed([new], sample)
    rows = [list(arrays.ids.astype(str)).index(i) for i in sample.item_ids]
    np.testing.assert_allclose(arrays.features[rows], expected, atol=1e-5)
    # published without a promotion, v2's gallery sits beside champion v1: not a pair anything
    # may build on (a sync refuses it); the tests after this one start from the adopted pair
    galleries.set_current(settings.gallery_name, live_before)


def test_gallery_sync_adds_and_removes_items_without_a_backfill(
    adopted: dict[str, Any], s3_images: S3ImageSet, tmp_path: Path
) -> None:
    from hotswap.flows.adopt import gallery_sync

    settings = adopted["settings"]
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    before = galleries.load_arrays(settings.gallery_name, live)
    wanted = pd.concat([adopted["gallery"].iloc[10:], s3_images.gallery(GALLERY + 15).iloc[GALLERY:]])
    wanted.to_parquet(tmp_path / "gallery-next.parquet")
    overrides = settings.model_dump(mode="json")
    overrides["gallery"]["manifest"] = str(tmp_path / "gallery-next.parquet")
    result = gallery_sync(overrides=overrides)
    assert (result["kept"], result["added"], result["removed"]) == (GALLERY - 10, 15, 10)
    assert galleries.read_current(settings.gallery_name) == result["gallery_version"]
    after = galleries.load_arrays(settings.gallery_name, result["gallery_version"])
    assert set(after.ids.astype(str)) == set(wanted["item_id"])
    old_rows = {item: row for row, item in enumerate(before.ids.astype(str))}
    kept = [r for r, item in enumerate(after.ids.astype(str)) if item in old_rows]
    np.testing.assert_array_equal(
        after.features[kept], before.features[[old_rows[i] for i in after.ids.astype(str)[kept]]]
    )
    champion = ModelRegistry.from_settings(settings).resolve("champion").version
    models = feature_models(galleries, settings.gallery_name, result["gallery_version"])
    assert list(models[-15:]) == [champion] * 15


def _wait_for_gallery(http: Any, version: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120  # readiness wait for the watcher, not a limit on the test
    while time.monotonic() < deadline:
        live = http.get("/live").json()
        if live["gallery_version"] == version:
            return live
        time.sleep(0.05)
    raise AssertionError(f"the service never served gallery {version}: {live}")


def test_a_running_and_a_freshly_started_service_serve_the_synced_gallery(
    adopted: dict[str, Any], tmp_path: Path
) -> None:
    import httpx
    from hotswap.components.gallery.live_state import read_live_target
    from hotswap.components.gallery.search import GallerySearcher
    from hotswap.components.serving.server import ServerThread
    from hotswap.components.serving.service import LiveService
    from hotswap.flows.adopt import gallery_sync

    settings, k = _serve_settings(adopted["settings"]), 20
    registry, galleries = ModelRegistry.from_settings(settings), gallery_store(settings)
    name = settings.gallery_name
    live = galleries.read_current(name)  # already a sync of the adopted gallery (the test above)
    assert read_live_target(registry, galleries, name).whole
    before = sorted(galleries.load_arrays(name, live).ids.astype(str))
    removed = before[::10]
    frame = adopted["images"].frame
    added = list(frame[frame["split"] == "gallery"]["item_id"].iloc[GALLERY + 100 : GALLERY + 112])
    assert not set(added) & set(before)
    wanted = frame[frame["item_id"].isin((set(before) - set(removed)) | set(added))][["item_id", "uri"]]
    wanted.to_parquet(tmp_path / "gallery-next.parquet")
    overrides = settings.model_dump(mode="json")
    overrides["gallery"]["manifest"] = str(tmp_path / "gallery-next.parquet")

    def ask(http: httpx.Client, item: str, k: int = k) -> dict[str, Any]:
        answer = http.post(f"/search/image?k={k}", content=adopted["images"].data[item])
        assert answer.status_code == 200, answer.text
        return answer.json()

    model = registry.load_model("1").eval()
    with ServerThread(LiveService(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/health").json()["gallery_version"] == live
        result = gallery_sync(overrides=overrides)
        synced = result["gallery_version"]
        assert (result["added"], result["removed"]) == (len(added), len(removed))
        _wait_for_gallery(http, synced)  # the running service followed the sync by itself
        searcher = GallerySearcher.from_version(galleries, name, synced, "1")
        for item in [*added, *before[1::25]]:
            body = ask(http, item)
            ids = [h["item_id"] for h in body["results"]]
            assert body["gallery_version"] == synced and not set(ids) & set(removed), ids
            with torch.no_grad():
                own = model.preprocessing(decode_uint8(adopted["images"].data[item]))[None]
                _, expected = searcher.search(model.embed(torch.from_numpy(own)).numpy(), k)
            assert ids == list(expected[0].astype(str))
        # the whole served ranking holds exactly the manifest's items: the added found, no removed
        everything = ask(http, added[0], k=len(wanted))["results"]
        assert {h["item_id"] for h in everything} == set(wanted["item_id"])
    # a sync never moves the champion's tag; the new version carries its descent instead
    assert registry.get_tags("1")["backfill.gallery_version"] == "v1-adopted"
    target = read_live_target(registry, galleries, name)
    assert target.whole and target.key == ("1", synced)
    # a service started after the sync is healthy at once, on the synced gallery
    with ServerThread(LiveService(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["gallery_version"] == synced, health.text
        everything = ask(http, added[-1], k=len(wanted))
        assert everything["gallery_version"] == synced
        assert {h["item_id"] for h in everything["results"]} == set(wanted["item_id"])


def test_adopt_with_a_corrupt_training_object_stores_nothing(
    s3_images: S3ImageSet, tmp_path: Path, sqlite_tracking_uri: str
) -> None:
    from hotswap.tasks.adopt import register_adopted_model

    bucket = create_bucket(s3_images.endpoint, "corrupt")
    client = s3_client(s3_images.endpoint)
    frame = s3_images.training().groupby("split").head(30).reset_index(drop=True)
    uris = []
    for n, item in enumerate(frame["item_id"]):
        body = b"GIF89a not really" if n == 7 else s3_images.data[item]
        client.put_object(Bucket=bucket, Key=f"t/{item}.jpg", Body=body)
        uris.append(f"s3://{bucket}/t/{item}.jpg")
    frame.assign(uri=uris).to_parquet(tmp_path / "train.parquet")
    torch.manual_seed(0)
    save_file(
        {k: v.contiguous() for k, v in resnet(widths=[8, 16], out_dim=D).state_dict().items()},
        tmp_path / "team.safetensors",
    )
    settings = HotswapSettings(
        home=str(tmp_path / "home"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        s3_endpoint_url=s3_images.endpoint,
        model_name="corrupt",
        data={"source": str(tmp_path / "train.parquet")},
        stream={"workers": 0},
    )
    bad = frame["item_id"][7]
    with pytest.raises(DataError, match=rf"item '{bad}' \(s3://{bucket}/t/{bad}.jpg\): unreadable image"):
        register_adopted_model.fn(settings, TEAM_SPEC, str(tmp_path / "team.safetensors"))
    assert ModelRegistry.from_settings(settings).list_versions() == []


def test_search_and_audit_read_the_streamed_data(adopted: dict[str, Any]) -> None:
    from hotswap.components.lifecycle.search import search_live
    from hotswap.flows.audit import audit

    settings = adopted["settings"]
    first = adopted["gallery"]["item_id"][0]
    hits = search_live(settings, item_id=first, k=3)
    assert hits.model_version == "1" and len(hits.results) == 3
    live_ids = set(
        gallery_store(settings).load_arrays(settings.gallery_name, hits.gallery_version).ids.astype(str)
    )
    assert {h.item_id for h in hits.results} <= live_ids
    result = audit(overrides=settings.model_dump(mode="json"))
    assert result["versions"] == ["1", "2"]
    assert 0 <= result["am"]["map"] <= 1
