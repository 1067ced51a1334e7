"""One lifecycle for every source: an RGB manifest with named classes, bootstrapped and refreshed
as classes arrive, through the same flows as the bundled digits.

Regression for what a new user saw: RGB images read as grayscale at 28 px with no word, classes
named by positions, and new classes' gallery items never reaching the live gallery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.procedural import procedural_images
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.lifecycle.search import search_live
from hotswap.components.registry.mlflow_registry import ModelRegistry

from tests.fixtures.lifecycle import fast_overrides

pytestmark = pytest.mark.slow

SIZE = 24
CLASSES = [f"glyph-{c}" for c in "abcdef"]


def _write_rgb_set(root: Path) -> pd.DataFrame:
    """60 RGB PNGs per class on local disk: train/val/test rows and gallery rows."""
    rows = []
    for i, label, payload in procedural_images(60 * len(CLASSES), len(CLASSES), size=SIZE, seed=3, fmt="PNG"):
        name = f"img-{i:04d}.png"
        (root / name).write_bytes(payload)
        split = ["train", "train", "train", "val", "test", "gallery"][(i // len(CLASSES)) % 6]
        rows.append({"item_id": f"item-{i:04d}", "uri": name, "label": CLASSES[label], "split": split})
    return pd.DataFrame(rows)


def _write_manifests(root: Path, frame: pd.DataFrame, classes: list[str]) -> tuple[str, str]:
    """The labelled data (train/val/test) and the gallery's own manifest, for ``classes`` only."""
    present = frame[frame["label"].isin(classes)]
    data = present[present["split"] != "gallery"]
    gallery = present[present["split"] == "gallery"][["item_id", "uri", "label"]]
    data.to_csv(root / "data.csv", index=False)
    gallery.to_csv(root / "gallery.csv", index=False)
    return str(root / "data.csv"), str(root / "gallery.csv")


@pytest.fixture(scope="module")
def rgb_home(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rgb-glyphs")
    frame = _write_rgb_set(root)
    data, gallery = _write_manifests(root, frame, CLASSES[:4])
    home = tmp_path_factory.mktemp("rgb-home")
    overrides = fast_overrides(str(home), str(home / "store"), None)
    overrides.update(
        model_name="rgbtest",
        data={"source": data, "validation_split": "val", "gate_split": "test"},
        gallery={"manifest": gallery},
        dpq={"epochs": 2, "n_blocks": 2, "n_codewords": 16, "kmeans_iters": 3},
        compat={"min_epoch_steps": 4},
        stream={"workers": 0},
    )
    return {"root": root, "frame": frame, "overrides": overrides}


def test_bootstrap_keeps_rgb_and_the_data_size_and_names_classes(rgb_home: dict[str, Any]) -> None:
    from hotswap.flows.bootstrap import bootstrap

    # given an RGB manifest with named labels, and no model settings
    # when the first model is bootstrapped
    result = bootstrap(overrides=rgb_home["overrides"])
    settings = HotswapSettings(**rgb_home["overrides"])
    registry = ModelRegistry.from_settings(settings)
    model = registry.load_model(result["version"])
    # then it reads 3 channels at the data's own size, on every named class of the data
    assert (model.spec.in_channels, model.spec.image_size) == (3, SIZE)
    assert model.preprocessing.channels == "RGB"
    assert model.spec.num_classes == 4  # the default digits 0-4 do not apply to named labels
    params = registry.client.get_run(registry.resolve(result["version"]).run_id).data.params
    assert "glyph-a" in params["data.classes"]
    # and the live gallery is exactly the gallery manifest
    galleries = GalleryStore(open_store(settings.resolved_store_uri))
    live = galleries.read_current(settings.gallery_name)
    expected = rgb_home["frame"].query("split == 'gallery' and label in @CLASSES[:4]")["item_id"]
    assert sorted(galleries.load_ids(settings.gallery_name, live).astype(str)) == sorted(expected)


def test_a_refresh_after_new_classes_serves_their_gallery_items(rgb_home: dict[str, Any]) -> None:
    from hotswap.flows.refresh import refresh

    # given two more classes in the data and in the gallery manifest
    _write_manifests(rgb_home["root"], rgb_home["frame"], CLASSES)
    # when the scheduled refresh runs
    state = refresh(overrides=rgb_home["overrides"], auto_promote=True, return_state=True)
    summary = state.result()
    # then the new classes' items were embedded by the champion before anything was decided
    new_items = rgb_home["frame"].query("split == 'gallery' and label in @CLASSES[4:]")["item_id"]
    assert summary["gallery_sync"]["added"] == len(new_items)
    assert summary["gallery_sync"]["removed"] == 0
    settings = HotswapSettings(**rgb_home["overrides"])
    galleries = GalleryStore(open_store(settings.resolved_store_uri))
    live = galleries.read_current(settings.gallery_name)
    assert set(new_items) <= set(galleries.load_ids(settings.gallery_name, live).astype(str))
    # and a search by one of them is answered from the live gallery, labels by name
    hits = search_live(settings, item_id=str(new_items.iloc[0]), k=5)
    assert len(hits.results) == 5
    assert {h.label for h in hits.results} <= set(CLASSES)
    # and the challenger was trained on all six named classes, still RGB at the data's size
    challenger = ModelRegistry.from_settings(settings).load_model(summary["challenger"])
    assert challenger.spec.num_classes == 6 and challenger.spec.in_channels == 3


def test_a_second_refresh_on_unchanged_inputs_trains_nothing(rgb_home: dict[str, Any]) -> None:
    from hotswap.flows.refresh import refresh

    # given nothing changed since the last refresh
    summary = refresh(overrides=rgb_home["overrides"], return_state=True).result()
    # then nothing is trained or synced
    assert summary["noop"] is True and summary["gallery_sync"] is None
    assert summary["reason"]


def test_a_first_model_that_learned_nothing_is_not_blessed(rgb_home: dict[str, Any], tmp_path: Path) -> None:
    from hotswap.components.lifecycle.first_model import FirstModelError
    from hotswap.flows.bootstrap import bootstrap

    # given labels that do not match the images (shuffled): nothing can be learned from them
    frame = rgb_home["frame"].copy()
    frame["uri"] = [str(rgb_home["root"] / u) for u in frame["uri"]]
    frame["label"] = np.random.default_rng(0).permutation(frame["label"].to_numpy())
    data, gallery = _write_manifests(tmp_path, frame, CLASSES)
    overrides = {
        **rgb_home["overrides"],
        "home": str(tmp_path / "home"),
        "store_uri": str(tmp_path / "store"),
        "model_name": "rgbchance",
        "data": {**rgb_home["overrides"]["data"], "source": data},
        "gallery": {"manifest": gallery},
    }
    # when it is bootstrapped, then it is refused in one line and nothing goes live
    with pytest.raises(FirstModelError, match=r"learned too little.*chance is"):
        bootstrap(overrides=overrides)
    registry = ModelRegistry.from_settings(HotswapSettings(**overrides))
    assert registry.aliases().get("champion") is None
    assert registry.get_tags("1")["hotswap.first_model"] == "refused"
    # and with force it is blessed anyway, and says so
    forced = bootstrap(overrides=overrides, force=True)
    assert forced["blessed"] and registry.aliases()["champion"] == forced["version"]
    assert registry.get_tags(forced["version"])["hotswap.first_model"] == "forced"
