"""The store's disk fills up mid-backfill, or the store is read-only: one clear line, a clean rerun.

The store lives on a real, small tmpfs mounted for the test (tests run as root here, so chmod
cannot make anything read-only, and a size-limited filesystem is the honest way to run out of
space). Where mounting is not allowed, the tests skip and say why.

- Disk full: the backfill pauses after shard 1 (components/core/faults.py), the test fills the disk,
  the backfill runs into ENOSPC and ends with one exit-7 line; the live gallery still loads.
  After space is freed the same command resumes and holds every live item once.
- Read-only: reading commands (``status``, ``search``) still work; a changing command ends with
  one exit-7 line naming the store; nothing on the store changed. Writable again, it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.versions import GalleryStore

from tests.e2e.bad_inputs import BASE_TOML
from tests.e2e.homes import PausedCommand, error_lines, home_digest, invoke

SMALL = {"HOTSWAP_BACKFILL__SHARD_SIZE": "30", "HOTSWAP_BACKFILL__WORKERS": "1"}
BACKFILL = ["backfill", "--version", "1", "--mode", "full"]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path, prefect_harness: None) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards; skips where this process may not mount."""
    point = tmp_path / "disk"
    point.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the storage fault tests need one")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def _home(small_disk: Path, tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "hotswap.toml"
    config.write_text(f'store_uri = "{(small_disk / "store").as_posix()}"\n' + BASE_TOML)
    home = tmp_path / "home"  # MLflow stays off the small disk: only the store runs out of space
    result = invoke(home, config, ["bootstrap"], SMALL)
    assert result.exit_code == 0, result.output
    return home, config


def _fill(disk: Path) -> Path:
    """Write one file until the filesystem is full; returns it (delete it to free the space)."""
    ballast = disk / "ballast"
    chunk = b"\0" * (1 << 16)
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while len(chunk) >= 512:
            try:
                os.write(fd, chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]  # the last pages, until not even 512 bytes fit
    finally:
        os.close(fd)
    return ballast


def test_disk_full_mid_backfill_is_one_line_and_the_rerun_resumes(small_disk: Path, tmp_path: Path) -> None:
    home, config = _home(small_disk, tmp_path)
    backfill = PausedCommand(BACKFILL, home, config, "backfill:shard-1-written", tmp_path / "pause", SMALL)
    backfill.wait_until_paused()
    ballast = _fill(small_disk)
    code, out, err = backfill.release()
    (line,) = error_lines(out + err)
    assert code == 7, out + err
    assert "No space left on device" in line and "the live gallery is unchanged" in line
    assert "Traceback" not in out + err
    galleries = GalleryStore(LocalObjectStore(small_disk / "store"))
    live = galleries.read_current("default")
    assert live == "v1-bootstrap" and "v1-full" not in galleries.list_versions("default")
    galleries.verify_version("default", live)  # the live version is intact

    ballast.unlink()
    resumed = invoke(home, config, BACKFILL, SMALL)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["gallery_version"] == "v1-full"
    rebuilt, current = galleries.load_arrays("default", "v1-full"), galleries.load_arrays("default", live)
    assert list(rebuilt.ids) == list(current.ids)  # every item once: nothing lost or duplicated
    np.testing.assert_allclose(rebuilt.features, current.features, atol=1e-5)


def test_read_only_store_reads_work_and_a_change_is_one_line(small_disk: Path, tmp_path: Path) -> None:
    home, config = _home(small_disk, tmp_path)
    _mount("-o", "remount,ro", str(small_disk))
    store_before = {p.relative_to(small_disk): p.read_bytes() for p in small_disk.rglob("*") if p.is_file()}
    registry_before = home_digest(home)
    try:
        assert invoke(home, config, ["status"]).exit_code == 0
        item = str(
            GalleryStore(LocalObjectStore(small_disk / "store")).load_arrays("default", "v1-bootstrap").ids[0]
        )
        found = invoke(home, config, ["search", "--item-id", item, "--k", "3"])
        assert found.exit_code == 0, found.output
        failed = invoke(home, config, BACKFILL, SMALL)
        (line,) = error_lines(failed.output)
        assert failed.exit_code == 7, failed.output
        assert "Read-only file system" in line and str(small_disk) in line
        assert "Traceback" not in failed.output
        after = {p.relative_to(small_disk): p.read_bytes() for p in small_disk.rglob("*") if p.is_file()}
        assert after == store_before and home_digest(home) == registry_before
    finally:
        _mount("-o", "remount,rw", str(small_disk))
    assert os.access(small_disk, os.W_OK)
    done = invoke(home, config, BACKFILL, SMALL)
    assert done.exit_code == 0, done.output
