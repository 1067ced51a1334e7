"""A service stops in the middle of a command, then comes back: one clear line, then a clean rerun.

Each command runs as a real ``hotswap`` process that pauses at a named step
(``HOTSWAP_TEST_PAUSE_AT``, components/core/faults.py); the test stops a real server there and lets
the command run into the outage. It must end with one ``error:`` line naming the service and
leave state the next command can repair; after the restart a plain rerun converges.

- MLflow (an ``mlflow server`` on SQLite) stops after the refresh trained and recorded v2: the
  rerun resumes v2 instead of training a third version, and no run stays RUNNING.
- S3 (moto's server holding the gallery) stops inside the switch, after the aliases moved and
  before CURRENT: the next command sees one whole pair, and ``promote --approve`` then switches.
"""

from __future__ import annotations

import json
from pathlib import Path

from hotswap.components.registry.mlflow_registry import ModelRegistry

from tests.e2e.bad_inputs import BASE_TOML
from tests.e2e.homes import PausedCommand, error_lines, invoke
from tests.fixtures.mlflow import RestartableMlflowServer
from tests.fixtures.s3 import RestartableMoto, create_bucket

SMALL = {"HOTSWAP_BACKFILL__SHARD_SIZE": "60", "HOTSWAP_BACKFILL__WORKERS": "1"}


def _status(home: Path, config: Path) -> dict:
    result = invoke(home, config, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_mlflow_stops_mid_refresh_then_the_rerun_resumes_the_same_version(
    restartable_mlflow: RestartableMlflowServer, prefect_harness, tmp_path: Path
) -> None:
    config = tmp_path / "hotswap.toml"
    config.write_text(f'tracking_uri = "{restartable_mlflow.uri}"\nservice_timeout_seconds = 2\n' + BASE_TOML)
    home = tmp_path / "home"
    assert invoke(home, config, ["bootstrap"]).exit_code == 0

    refresh = PausedCommand(["refresh"], home, config, "refresh:trained", tmp_path / "pause", SMALL)
    refresh.wait_until_paused()
    restartable_mlflow.stop()
    code, out, err = refresh.release()
    (line,) = error_lines(out + err)
    assert code == 5, out + err
    assert f"MLflow tracking server {restartable_mlflow.uri}" in line
    assert "Traceback" not in out + err

    restartable_mlflow.start()
    rerun = invoke(home, config, ["refresh"], SMALL)
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["challenger"] == "2"
    assert summary["recovery"] == ["resuming the interrupted refresh of v2 after its stage 'trained'"]
    reg = ModelRegistry(restartable_mlflow.uri, model_name="matrix")
    assert [v.version for v in reg.list_versions()] == ["1", "2"]  # nothing trained twice
    assert reg.get_tags("2")["hotswap.refresh.stage"] == "staged"
    running = reg.client.search_runs(
        [reg.client.get_experiment_by_name(reg.experiment_name).experiment_id],
        filter_string="attributes.status = 'RUNNING'",
    )
    assert running == []  # the run the outage left RUNNING was marked FAILED by the rerun


def test_s3_stops_inside_the_switch_then_one_whole_pair_and_the_rerun_switches(
    restartable_moto: RestartableMoto, prefect_harness, tmp_path: Path
) -> None:
    bucket = create_bucket(restartable_moto.url, prefix="switch-outage")
    config = tmp_path / "hotswap.toml"
    config.write_text(
        f'store_uri = "s3://{bucket}/g"\ns3_endpoint_url = "{restartable_moto.url}"\n'
        "service_timeout_seconds = 2\n" + BASE_TOML
    )
    home = tmp_path / "home"
    for argv in (["bootstrap"], ["refresh", "--prebuild"]):  # v2's gallery staged before the promotion
        result = invoke(home, config, argv, SMALL)
        assert result.exit_code == 0, result.output
    staged = json.loads(result.stdout)["gallery_version"]
    before = _status(home, config)

    promote = PausedCommand(
        ["promote", "--approve"], home, config, "switch:aliases-moved", tmp_path / "pause", SMALL
    )
    promote.wait_until_paused()
    restartable_moto.stop()
    code, out, err = promote.release()
    (line,) = error_lines(out + err)
    assert code == 5, out + err
    assert f"S3 store s3://{bucket}/g at {restartable_moto.url} did not answer" in line
    assert "Traceback" not in out + err

    restartable_moto.restart()
    after = _status(home, config)
    assert (after["champion"], after["live_gallery_version"]) == (
        before["champion"],
        before["live_gallery_version"],
    )  # the aliases moved but CURRENT did not: rolled back to the whole old pair
    rerun = invoke(home, config, ["promote", "--approve"])
    assert rerun.exit_code == 0, rerun.output
    final = _status(home, config)
    assert (final["champion"], final["live_gallery_version"]) == ("2", staged)
