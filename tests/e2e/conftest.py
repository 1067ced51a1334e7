"""Session homes for the command-line fault tests (built once by the real commands)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.bad_inputs import BASE_TOML
from tests.e2e.homes import invoke


@pytest.fixture(scope="session")
def cli_homes(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[dict[str, Path]]:
    """``live``: v1 champion + a decided v2 challenger (bootstrap + refresh --prebuild, v2's gallery staged);
    ``empty``: an initialised, empty registry; ``config``: the settings file both use."""
    root = tmp_path_factory.mktemp("cli-homes")
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
    yield {"live": live, "empty": empty, "config": config}
