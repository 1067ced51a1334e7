"""SIGKILL a refresh during training, after a stage and during its backfill: the rerun resumes.

``hotswap refresh`` runs as a real process with ``HOTSWAP_TEST_KILL_AT`` (components/core/faults.py)
and kills itself with SIGKILL at that point, three times in a row on the same home; each rerun
resumes what the previous one recorded (tasks/refresh_progress.py). A fourth, plain rerun must
end exactly where one uninterrupted refresh of a copy of the same home ends: the same model
versions, aliases, decision and CURRENT, and a staged gallery version with the same ids,
features and codes. A rerun with other settings instead abandons the interrupted refresh and
deletes its staged gallery, saying so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.mlflow_registry import ModelRegistry

from tests.e2e.bad_inputs import copy_home
from tests.e2e.homes import invoke

HOTSWAP = Path(sys.executable).with_name("hotswap")
#: another seed than the session home's refresh, so this refresh is not a no-op: it trains v3;
#: prebuild_on_review: the refresh builds the gallery it decided (the backfill killed below)
NEW_INPUTS = {
    "HOTSWAP_SEED": "7",
    "HOTSWAP_BACKFILL__SHARD_SIZE": "30",
    "HOTSWAP_BACKFILL__WORKERS": "1",
    "HOTSWAP_PREBUILD_ON_REVIEW": "true",
}


def _refresh_killed_at(home: Path, config: Path, step: str) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        **NEW_INPUTS,
        "HOTSWAP_CONFIG": str(config),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "HOTSWAP_TEST_KILL_AT": step,
    }
    killed = subprocess.run(
        [str(HOTSWAP), "refresh", "--home", str(home)], env=env, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, f"{step}: {killed.stdout}{killed.stderr}"


def _registry(home: Path) -> ModelRegistry:
    return ModelRegistry(f"sqlite:///{home / 'mlflow.db'}", model_name="matrix")


def _state(home: Path) -> dict:
    """What a rerun must converge to: versions, stages, aliases, decisions, CURRENT, staged galleries."""
    reg = _registry(home)
    galleries = GalleryStore(LocalObjectStore(home / "store"))
    return {
        "versions": {
            v.version: (v.tags.get("hotswap.refresh.stage"), v.tags.get("backfill.decision"))
            for v in reg.list_versions()
        },
        "aliases": reg.aliases(),
        "current": galleries.read_current("default"),
        "galleries": galleries.list_versions("default", include_staged=True),
    }


def _stage(home: Path, version: str) -> str | None:
    return _registry(home).get_tags(version).get("hotswap.refresh.stage")


def test_a_refresh_killed_three_times_resumes_and_ends_as_an_uninterrupted_one(
    cli_homes, tmp_path: Path
) -> None:
    config = cli_homes["config"]
    crashed = copy_home(cli_homes["live"], tmp_path / "crashed")
    clean = copy_home(cli_homes["live"], tmp_path / "clean")
    before = _state(crashed)

    _refresh_killed_at(crashed, config, "training:epoch-1")
    assert _state(crashed)["versions"] == before["versions"]  # nothing was registered

    _refresh_killed_at(crashed, config, "refresh:validated")
    assert _stage(crashed, "3") == "validated"

    _refresh_killed_at(crashed, config, "backfill:shard-1-written")
    assert _stage(crashed, "3") == "decided"  # codebooks and decision recorded, gallery half written
    galleries = GalleryStore(LocalObjectStore(crashed / "store"))
    assert "v3-full" in galleries.list_versions("default", include_staged=True)
    assert "v3-full" not in galleries.list_versions("default")
    page = invoke(crashed, config, ["status"])
    assert "v3, its refresh stopped after stage 'decided': run `hotswap refresh`" in page.output, page.output
    interrupted = copy_home(crashed, tmp_path / "interrupted")  # for the abandon case below

    resumed = invoke(crashed, config, ["refresh"], NEW_INPUTS)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["challenger"] == "3"
    assert summary["recovery"] == ["resuming the interrupted refresh of v3 after its stage 'decided'"]
    assert "note: resuming the interrupted refresh of v3" in resumed.stderr  # said, not only in the JSON

    reference = invoke(clean, config, ["refresh"], NEW_INPUTS)
    assert reference.exit_code == 0, reference.output
    assert json.loads(reference.stdout)["recovery"] == []
    assert _state(crashed) == _state(clean)
    assert _state(crashed)["versions"]["3"] == ("staged", summary["decision"])
    a = GalleryStore(LocalObjectStore(crashed / "store")).load_arrays("default", summary["gallery_version"])
    b = GalleryStore(LocalObjectStore(clean / "store")).load_arrays("default", summary["gallery_version"])
    assert list(a.ids) == list(b.ids) and len(set(a.ids)) == len(a.ids)  # nothing lost or duplicated
    np.testing.assert_array_equal(a.features, b.features)  # the same (resumed) model, not a retrained one
    np.testing.assert_array_equal(a.codes, b.codes)

    again = invoke(crashed, config, ["refresh"], NEW_INPUTS)  # finished: a no-op now
    assert again.exit_code == 0 and json.loads(again.stdout)["noop"] is True, again.output

    # other settings: the interrupted refresh no longer applies, so it is cleaned up, not resumed
    changed = {**NEW_INPUTS, "HOTSWAP_SEED": "8"}
    cleaned = invoke(interrupted, config, ["refresh"], changed)
    assert cleaned.exit_code == 0, cleaned.output
    (line,) = json.loads(cleaned.stdout)["recovery"]
    assert line.startswith("abandoned the unfinished refresh of v3: it was started with settings hash")
    assert "deleted its staged gallery version(s) v3-full" in line
    after = _state(interrupted)
    assert after["versions"]["3"][0] == "abandoned" and after["versions"]["4"][0] == "staged"
    assert "v3-full" not in after["galleries"]
    assert after["aliases"]["challenger"] == "4"
    refused = invoke(interrupted, config, ["promote", "3", "--approve"])
    assert refused.exit_code == 3 and "v3's refresh was abandoned" in refused.output, refused.output
