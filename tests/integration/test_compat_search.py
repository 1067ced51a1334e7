"""The refresh's compatibility search, end to end on a small real case.

The case: scikit-learn's digits written as an image folder and read at 8×8 (fast), the old model
on digits 0-4 for 2 epochs, the configured compatible weights deliberately without the
step floor (``min_epoch_steps = 0``: 2 epochs of 17 steps, too few for the prototype and O2N
terms) and a gate on mAP. The configured challenger fails; the search may try two candidates but
has a budget of one trial, and that trial (the step floor back on) passes on val. The selected
model is registered, then gated on the test split, which the selection never saw.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hotswap.components.compat.cross_eval import compatibility_matrix
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.sources import open_source
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.tasks.compat_search import PARENT_RUN_TAG, TRIAL_TAG
from mlflow import MlflowClient

from bench.compat import write_digits_folder
from tests.fixtures.lifecycle import fast_overrides

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def searched(prefect_harness, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from hotswap.flows.bootstrap import bootstrap
    from hotswap.flows.refresh import refresh

    folder = write_digits_folder(tmp_path_factory.mktemp("digits"))
    home = tmp_path_factory.mktemp("hotswap-search-home")
    overrides = {
        **fast_overrides(str(home), str(home / "store"), None),
        "model_name": "searchtest",
        "data": {"source": str(folder), "image_size": 8},
        "training": {"epochs": 2, "embedding_dim": 16},
        "compat": {"min_epoch_steps": 0},
        "thresholds": {"metrics": ["map"]},
        "compat_search": {
            "max_trials": 1,
            "strategy": "grid",
            "stop_on_pass": False,
            "proto_weight": [8.0],
            "margin": [0.15],
            "o2n_weight": [1.0],
            "anchor_weight": [0.0],
            "min_epoch_steps": [0, 88, 132],
        },
    }
    bootstrap(overrides=overrides)
    summary = refresh(overrides=overrides, auto_promote=False)
    return {"summary": summary, "settings": HotswapSettings(**overrides)}


def test_search_replaces_a_failing_challenger_within_budget(searched):
    settings, summary = searched["settings"], searched["summary"]
    registry = ModelRegistry.from_settings(settings)
    # v2 (the configured weights) failed on val; the search registered v3 and moved the alias
    assert registry.load_report("2").blessed is False
    assert summary["challenger"] == "3" and summary["blessed"] is True
    assert registry.aliases()["challenger"] == "3"
    parent_run = registry.resolve("2").run_id
    client = MlflowClient(settings.resolved_tracking_uri)
    trials = client.search_runs(
        [registry.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run}'"
    )
    # two candidates differ from the configured config, the budget allows one: one nested run
    assert len(trials) == 1
    trial = trials[0]
    assert trial.data.tags[TRIAL_TAG] == "0" and trial.data.params["compat.min_epoch_steps"] == "88"
    assert registry.resolve("3").run_id == trial.info.run_id
    assert trial.data.metrics["search.passed"] == 1.0
    record = json.loads(registry.run_artifact_bytes(parent_run, "compat_search/search.json"))
    assert record["selected"] == 0 and len(record["trials"]) == 1
    assert record["stopped"] == "trial budget of 1 spent"


def test_the_gate_judges_the_searched_model_on_the_unseen_split(searched):
    settings = searched["settings"]
    registry = ModelRegistry.from_settings(settings)
    report = registry.load_report("3")
    data = open_source(settings.data.source, synthetic_size=settings.data.image_size)
    on_test = compatibility_matrix(registry.load_model("1"), registry.load_model("3"), data.split("test"))
    assert report.matrix["new/old"]["map"] == pytest.approx(on_test["new/old"].map, abs=1e-6)
    trial = MlflowClient(settings.resolved_tracking_uri).get_run(registry.resolve("3").run_id)
    # the selection score came from val, a different set of items
    assert trial.data.metrics["val.new/old.map"] != pytest.approx(on_test["new/old"].map, abs=1e-6)
