"""Session homes for the command-line fault tests (built once by the real commands).

Building them (a bootstrap and a refresh) is the dearest set-up of the suite, and each test
process would build its own: the first process to need them builds them once under a file lock
in the run's shared temporary folder, and every process works on its own copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from tests.e2e.bad_inputs import BASE_TOML
from tests.e2e.homes import invoke


def _build(root: Path) -> None:
    """``live``: v1 champion + a decided v2 challenger (bootstrap + refresh --prebuild, v2's gallery
    staged); ``empty``: an initialised, empty registry; ``config``: the settings file both use."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "hotswap.toml"
    config.write_text(BASE_TOML)
    live, empty = root / "live", root / "empty"
    for argv in (["bootstrap"], ["refresh", "--prebuild"]):  # v2's gallery built now, not on approval
        result = invoke(live, config, argv)
        assert result.exit_code == 0, result.output
    assert invoke(empty, config, ["status"]).exit_code == 0
    # `status` on a fresh home creates no MLflow database: initialise the empty registry explicitly
    from hotswap.components.core.settings import load_settings
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_CONFIG", str(config))
        ModelRegistry.from_settings(load_settings(home=str(empty))).aliases()
    assert (empty / "mlflow.db").exists()
    (root / "built").touch()


@pytest.fixture(scope="session")
def cli_homes(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, worker_id: str
) -> Iterator[dict[str, Path]]:
    """``live``, ``empty`` and ``config`` (see :func:`_build`), this test process's own copies."""
    root = tmp_path_factory.mktemp("cli-homes")
    if worker_id == "master":  # one process: no one to share with
        _build(root)
    else:  # the run's folder, shared by its test processes (pytest-N/, above popen-gwK/)
        shared = tmp_path_factory.getbasetemp().parent / "cli-homes-shared"
        with FileLock(f"{shared}.lock"):
            if not (shared / "built").exists():
                shutil.rmtree(shared, ignore_errors=True)  # a half-built one from a failed build
                _build(shared)
        for name in ("live", "empty"):
            shutil.copytree(shared / name, root / name, ignore=shutil.ignore_patterns("prefect", "logs"))
        (root / "hotswap.toml").write_text(BASE_TOML)
    yield {"live": root / "live", "empty": root / "empty", "config": root / "hotswap.toml"}
