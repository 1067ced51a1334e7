"""The fast read paths of ``status`` and ``search`` give what the MLflow-backed ones give.

``status``/``search``/``report`` read the registry from MLflow's SQLite database directly
(components/registry/sqlite_reader.py) and query by a live item's stored feature
(components/gallery/item_features.py). These tests hold them to the slow paths on a real home:
the same versions, tags, reports and decisions as MLflow's client; the same query vector as the
champion's embedding; a promotion seen at once (nothing cached); and a run left RUNNING by a
killed process still repaired by the next ``status``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.bad_inputs import copy_home


def _settings(home: Path, config: Path):
    from hotswap.components.core.settings import load_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_CONFIG", str(config))
        return load_settings(home=str(home))


def _status(home: Path, config: Path) -> tuple[dict, str]:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("hotswap")), "status", "--json", "--home", str(home)],
        capture_output=True,
        text=True,
        env={**os.environ, "HOTSWAP_CONFIG": str(config)},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), result.stderr


def test_the_sqlite_reader_reads_what_mlflow_reads(cli_homes) -> None:
    from hotswap.components.decision.storage import DECISION_JSON
    from hotswap.components.registry.mlflow_registry import ModelRegistry
    from hotswap.components.registry.sqlite_reader import open_reader

    settings = _settings(cli_homes["live"], cli_homes["config"])
    reader, registry = open_reader(settings), ModelRegistry.from_settings(settings)
    assert reader is not None, "the home's SQLite registry must be read directly"
    assert reader.aliases() == registry.aliases() == {"champion": "1", "challenger": "2"}
    for ref in ("champion", "challenger", "1", "2", f"models:/{settings.model_name}@champion"):
        assert reader.resolve(ref) == registry.resolve(ref), ref
    assert reader.load_report("challenger") == registry.load_report("challenger")
    assert reader.load_artifact_bytes("2", DECISION_JSON) == registry.load_artifact_bytes("2", DECISION_JSON)
    mine, theirs = reader.load_model("champion").state_dict(), registry.load_model("champion").state_dict()
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    assert reader.dead_runs() == []


def test_a_live_items_stored_feature_is_the_champions_embedding_of_it(cli_homes) -> None:
    from hotswap.components.gallery.item_features import stored_query_feature
    from hotswap.components.gallery.store_factory import open_store
    from hotswap.components.gallery.versions import GalleryStore
    from hotswap.components.lifecycle.search import embed_query
    from hotswap.components.registry.sqlite_reader import open_reader

    settings = _settings(cli_homes["live"], cli_homes["config"])
    galleries = GalleryStore(open_store(settings.resolved_store_uri))
    live = galleries.read_current(settings.gallery_name)
    model = open_reader(settings).load_model("champion")
    ids = galleries.load_ids(settings.gallery_name, live)
    for item in (ids[0], ids[len(ids) // 2], ids[-1]):  # first and later shards
        stored = stored_query_feature(galleries, settings.gallery_name, live, str(item), "1")
        assert stored is not None and stored.shape == (1, settings.training.embedding_dim)
        np.testing.assert_allclose(stored, embed_query(settings, model, None, str(item)), atol=1e-5)
    # features of another model version are never taken for the champion's query
    assert stored_query_feature(galleries, settings.gallery_name, live, str(ids[0]), "2") is None
    assert stored_query_feature(galleries, settings.gallery_name, live, "no-such-item", "1") is None


def test_status_shows_a_promotion_at_once_and_still_repairs_a_dead_processs_run(cli_homes, tmp_path) -> None:
    from hotswap.components.registry.mlflow_registry import ModelRegistry
    from hotswap.components.registry.records import TAG_HOST, TAG_PID

    home, config = copy_home(cli_homes["live"], tmp_path / "home"), cli_homes["config"]
    registry = ModelRegistry.from_settings(_settings(home, config))
    registry.promote("2")  # an alias move as a switch makes it: the next status must show it
    state, _ = _status(home, config)
    assert (state["champion"], state["previous"], state["challenger"]) == ("2", "1", None)

    # a process that has exited
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    owner = {TAG_PID: gone.stdout.decode().strip(), TAG_HOST: socket.gethostname()}
    run = registry.client.create_run(registry.experiment_id, tags=owner)
    state, notes = _status(home, config)
    assert "marked 1 MLflow run(s) FAILED" in notes and run.info.run_id in notes
    assert registry.client.get_run(run.info.run_id).info.status == "FAILED"
    assert state["champion"] == "2"
