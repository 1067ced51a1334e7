"""What a command starts before it answers: nothing for an input error or a read, one shared local
Prefect API per home for lifecycle commands (flows/local_api.py). Real processes, no mocks.

Each command runs in a real process through a small wrapper that reports, at exit, which heavy
packages the process imported; files and processes are checked afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

HEAVY = ("torch", "mlflow", "prefect")


def _wrapper(watched: tuple[str, ...]) -> str:
    """Runs the CLI, then prints which of ``watched`` it imported on stderr (even when it fails)."""
    return (
        "import sys\n"
        "from hotswap.flows.cli import run\n"
        "try:\n    run()\n"
        "finally:\n"
        f"    print('IMPORTED=' + ','.join(m for m in {watched!r} if m in sys.modules), file=sys.stderr)\n"
    )


BAD_MANIFEST_HEADER = "item_id,uri,split\n"  # no label column


def _run(
    argv: list[str], home: Path, watched: tuple[str, ...] = HEAVY, **env: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    full_env = {**os.environ, "COLUMNS": "200"}
    full_env.pop("PREFECT_API_URL", None)  # unless ``env`` names one: the home's own local API
    full_env.update(env)
    result = subprocess.run(
        [sys.executable, "-c", _wrapper(watched), *argv, "--home", str(home)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )
    line = [x for x in result.stderr.splitlines() if x.startswith("IMPORTED=")][-1]
    return result, {m for m in line.removeprefix("IMPORTED=").split(",") if m}


def _servers_for(home: Path) -> list[psutil.Process]:
    """Live per-home Prefect API processes whose PREFECT_HOME lies in ``home``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            ours = "hotswap.flows.local_api_server" in " ".join(proc.info["cmdline"] or [])
            if ours and proc.environ().get("PREFECT_HOME", "").startswith(str(home)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


LIFECYCLE_INPUT_ERRORS = {
    "bootstrap": (["bootstrap"], "missing column(s) ['label']"),
    "refresh": (["refresh"], "missing column(s) ['label']"),
    "audit": (["audit"], "missing column(s) ['label']"),
    "gallery-sync": (["gallery-sync"], "missing column(s) ['label']"),
    "backfill": (["backfill", "--mode", "partial", "--fraction", "1.5"], "0 < fraction < 1"),
    "promote": (["promote", "v2", "--approve"], "'v2' is not a version"),
    "rollback": (["rollback"], "unsupported scheme 'ftp'"),
    "adopt": (
        ["adopt", "--spec", "/nonexistent/spec.json", "--weights", "w", "--gallery-features", "f.npy"],
        "not a readable JSON model spec",
    ),
    "data register": (["data", "register", "/nonexistent/data.csv"], "file does not exist"),
}


@pytest.mark.parametrize("command", list(LIFECYCLE_INPUT_ERRORS))
def test_an_input_error_starts_no_prefect_api_creates_no_mlflow_database_and_imports_nothing_heavy(
    command: str, tmp_path: Path
) -> None:
    argv, expected = LIFECYCLE_INPUT_ERRORS[command]
    manifest = tmp_path / "data.csv"
    manifest.write_text(BAD_MANIFEST_HEADER + "a,a.png,train\n")
    env = {"HOTSWAP_DATA__SOURCE": str(manifest)}
    if command == "rollback":
        env["HOTSWAP_STORE_URI"] = "ftp://example.invalid/galleries"
    home = tmp_path / "home"
    result, imported = _run(argv, home, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert imported == set(), f"an input error imported {imported}"
    assert not (home / "mlflow.db").exists()
    assert not (home / "prefect").exists()  # no Prefect database, no recorded server
    assert _servers_for(tmp_path) == []


def test_status_and_search_on_a_fresh_home_start_nothing_and_create_no_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    status, imported = _run(["status", "--json"], home)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["champion"] is None
    assert imported == set(), f"status on a fresh home imported {imported}"
    search, imported = _run(["search", "--item-id", "mnist5k-00001"], home)
    assert search.returncode == 3 and "hotswap bootstrap" in search.stdout, search.stdout + search.stderr
    assert imported == set(), f"search on a fresh home imported {imported}"
    assert not (home / "mlflow.db").exists() and not (home / "prefect").exists()


def test_the_local_api_is_shared_replaced_when_killed_and_stopped_by_hand(tmp_path: Path) -> None:
    """Two lifecycle commands share one server; a killed one is replaced; `server stop` stops it.

    ``rollback`` on a fresh home runs a real flow on the API and fails on state (nothing to roll
    back to), which keeps the test to Prefect's own cost.
    """
    home = tmp_path / "home"
    first, imported = _run(["rollback"], home)
    assert first.returncode == 3 and "'previous'" in first.stdout, first.stdout + first.stderr
    assert "prefect" in imported
    state = json.loads((home / "prefect" / "api.json").read_text())
    (server,) = _servers_for(tmp_path)
    assert server.pid == state["pid"]  # it outlived the command that started it

    second, _ = _run(["rollback"], home)
    assert second.returncode == 3, second.stdout + second.stderr
    assert json.loads((home / "prefect" / "api.json").read_text())["pid"] == state["pid"]  # reused

    os.kill(state["pid"], signal.SIGKILL)
    server.wait(timeout=30)
    third, _ = _run(["rollback"], home)
    assert third.returncode == 3, third.stdout + third.stderr
    replaced = json.loads((home / "prefect" / "api.json").read_text())
    assert replaced["pid"] != state["pid"]
    assert [p.pid for p in _servers_for(tmp_path)] == [replaced["pid"]]

    stop = subprocess.run(
        [str(Path(sys.executable).with_name("hotswap")), "server", "stop", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0 and f"pid {replaced['pid']}" in stop.stdout, stop.stdout + stop.stderr
    assert not (home / "prefect" / "api.json").exists()
    deadline = time.monotonic() + 30
    while _servers_for(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _servers_for(tmp_path) == []


def test_a_local_api_that_does_not_start_in_time_is_a_service_failure_not_a_bug(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result, _ = _run(["rollback"], home, HOTSWAP_PREFECT_START_TIMEOUT_SECONDS="0.5")
    assert result.returncode == 5, result.stdout + result.stderr  # the "service" class
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("error:")]
    assert "the local Prefect API did not start within 0.5 s" in line
    assert "prefect_start_timeout_seconds" in line and "this is a bug" not in line
    assert not (home / "prefect" / "api.json").exists()
    assert _servers_for(tmp_path) == []  # the half-started server was stopped


def _live_settings(home: Path, config: Path):
    from hotswap.components.core.settings import load_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_CONFIG", str(config))
        return load_settings(home=str(home))


def test_status_and_search_on_a_live_home_import_neither_mlflow_nor_torch_nor_prefect(
    cli_homes, tmp_path: Path
) -> None:
    """The read-only commands on a live home: the registry read from MLflow's SQLite database,
    a live item's query from its stored feature; torch only to embed an item that is not live."""
    from hotswap.components.data.catalog import labelled_data
    from hotswap.components.gallery.store_factory import open_store
    from hotswap.components.gallery.versions import GalleryStore

    home, config = cli_homes["live"], cli_homes["config"]
    status, imported = _run(["status", "--json"], home, HOTSWAP_CONFIG=str(config))
    assert status.returncode == 0, status.stdout + status.stderr
    assert imported == set(), f"status imported {imported}"
    state = json.loads(status.stdout)
    assert (state["champion"], state["challenger"]) == ("1", "2")
    assert state["challenger_report"]["new_version"] == "2" and state["last_decision"]["version"] == "2"

    live, item = state["live_gallery_version"], state["example_item"]
    search, imported = _run(["search", "--item-id", item, "--k", "3"], home, HOTSWAP_CONFIG=str(config))
    assert search.returncode == 0, search.stdout + search.stderr
    assert imported == set(), f"search of a live item imported {imported}"
    assert f"ingallery{live}(modelv1" in "".join(search.stdout.split())

    settings = _live_settings(home, config)
    galleries = GalleryStore(open_store(settings.resolved_store_uri))
    live_ids = set(galleries.load_ids(settings.gallery_name, live).tolist())
    outside = next(i for i in labelled_data(settings).item_ids.tolist() if i not in live_ids)
    search, imported = _run(["search", "--item-id", outside, "--k", "3"], home, HOTSWAP_CONFIG=str(config))
    assert search.returncode == 0, search.stdout + search.stderr
    assert "mlflow" not in imported and "prefect" not in imported and "torch" in imported
    assert _servers_for(home) == [] and _servers_for(tmp_path) == []


def test_a_repeated_status_answers_from_its_snapshot_until_the_registry_changes(
    cli_homes, tmp_path: Path
) -> None:
    """components/lifecycle/status_snapshot.py on a real home: the second status reads neither the
    data nor the gallery's arrays (no numpy, no pandas); a registry write is seen at once; a
    lifecycle command leaves the snapshot of the state it ends in, and a refresh that has nothing
    to do loads neither torch nor faiss (tasks import them when they run, tasks/context.py)."""
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    from tests.e2e.bad_inputs import copy_home

    home, config = copy_home(cli_homes["live"], tmp_path / "home"), str(cli_homes["config"])
    first, imported = _run(["status"], home, ("numpy", "pandas"), HOTSWAP_CONFIG=config)
    assert first.returncode == 0 and {"numpy", "pandas"} <= imported, first.stdout + first.stderr
    again, imported = _run(["status"], home, ("numpy", "pandas", *HEAVY), HOTSWAP_CONFIG=config)
    assert again.stdout == first.stdout and imported == set(), imported

    # when: a reviewer's rejection is recorded on the challenger (a registry write)
    ModelRegistry(f"sqlite:///{home / 'mlflow.db'}", model_name="matrix").set_tags(
        "2", {"promotion.status": "rejected", "promotion.reason": "not this week"}
    )
    after, imported = _run(["status"], home, ("numpy", "pandas"), HOTSWAP_CONFIG=config)
    assert "promotion of the latest version: rejected (not this week)" in after.stdout, after.stdout
    assert "promotion of the latest version" not in first.stdout and "numpy" in imported

    # when: a lifecycle command changes the home (a no-op refresh records its run), it leaves the
    # snapshot behind, so the next status reads nothing heavy and says what a full read says
    from prefect.settings import PREFECT_API_URL

    refreshed, imported = _run(
        ["refresh"],
        home,
        ("torch", "faiss", "mlflow"),
        HOTSWAP_CONFIG=config,
        PREFECT_API_URL=PREFECT_API_URL.value(),
    )
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert json.loads(refreshed.stdout)["noop"] is True, refreshed.stdout
    assert imported == {"mlflow"}, f"a no-op refresh imported {imported}"  # mlflow records the no-op
    left, imported = _run(["status"], home, ("numpy", "pandas", *HEAVY), HOTSWAP_CONFIG=config)
    assert imported == set(), imported
    (home / "cache" / "status.json").unlink()
    full, _ = _run(["status"], home, HOTSWAP_CONFIG=config)
    assert left.stdout == full.stdout
