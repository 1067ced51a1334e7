"""SIGKILL during a backfill: the rerun resumes the staged version and ends as an uninterrupted run."""

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

from tests.e2e.bad_inputs import copy_home
from tests.e2e.homes import invoke

HOTSWAP = Path(sys.executable).with_name("hotswap")
ARGS = ["backfill", "--version", "2", "--mode", "partial", "--fraction", "0.5"]
TARGET = "v2-partial-0500"
SMALL_SHARDS = {"HOTSWAP_BACKFILL__SHARD_SIZE": "30", "HOTSWAP_BACKFILL__WORKERS": "1"}


def _shard_files(home: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every committed shard file of the target version."""
    folder = home / "store" / "galleries" / "default" / "versions" / TARGET / "shards"
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*"))}


def test_killed_backfill_resumes_and_converges_to_the_uninterrupted_result(cli_homes, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    config = cli_homes["config"]
    crashed, clean = (
        copy_home(cli_homes["live"], tmp_path / "crashed"),
        copy_home(cli_homes["live"], tmp_path / "clean"),
    )
    env = {
        **os.environ,
        **SMALL_SHARDS,
        "HOTSWAP_CONFIG": str(config),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "HOTSWAP_TEST_KILL_AT": "backfill:shard-1-written",
    }
    killed = subprocess.run(
        [str(HOTSWAP), *ARGS, "--home", str(crashed)], env=env, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    galleries = GalleryStore(LocalObjectStore(crashed / "store"))
    assert TARGET not in galleries.list_versions("default")  # staged, not finalized
    assert TARGET in galleries.list_versions("default", include_staged=True)
    written = _shard_files(crashed)
    assert {"000000.json", "000001.json"} <= set(written) and "000002.json" not in written

    resumed = invoke(crashed, config, ARGS, SMALL_SHARDS)  # takes over the dead holder's lease at once
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["gallery_version"] == TARGET
    after = _shard_files(crashed)
    for name in ("000000.json", "000001.json"):
        assert after[name] == written[name]  # finished shards were verified, not rewritten

    reference = invoke(clean, config, ARGS, SMALL_SHARDS)
    assert reference.exit_code == 0, reference.output
    a = GalleryStore(LocalObjectStore(crashed / "store")).load_arrays("default", TARGET)
    b = GalleryStore(LocalObjectStore(clean / "store")).load_arrays("default", TARGET)
    assert list(a.ids) == list(b.ids) and len(set(a.ids)) == len(a.ids)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.codes, b.codes)
