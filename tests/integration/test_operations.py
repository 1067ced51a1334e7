"""Operating hotswap like production: a real Prefect server on PostgreSQL, a process work pool
worker running the deployments from deployments/prefect.yaml, the CLI against that server.

One module-scoped set-up (server, pool, deployments, worker, a small manifest dataset on disk);
the tests then run in order, each on the state the previous one left:
1. a CLI-started bootstrap sends its INFO logs to the API and is named after what it does;
2. `hotswap data register` emits the dataset event, the deployment trigger starts the refresh
   through the worker with that dataset version, and both UIs link to each other;
   registering the same data again starts nothing;
3. a refresh by hand while the deployment's refresh holds the gallery waits for it (the gallery's
   lease), and their lifecycle steps never interleave;
4. the promote deployment pauses, is resumed through the API with the typed form, and switches live.

Small data (synthetic 16×16 images, 4 classes), one epoch: the orchestration is under test here;
the lifecycle's quality is covered by tests/integration/test_flows.py and the demo test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.data.sources import open_source
from hotswap.components.registry.mlflow_registry import ModelRegistry

from tests.fixtures.prefect_server import PREFECT, PrefectServer, stop_process_group
from tests.fixtures.s3 import S3_KEY, S3_REGION, create_bucket

ROOT = Path(__file__).resolve().parents[2]
HOTSWAP = Path(sys.executable).with_name("hotswap")
WAIT_S = 600  # readiness waits for subprocesses on a shared box, not limits on any test
POOL = "hotswap-process"
MODEL = "opstest"
IMAGE_SIZE = 16


def _write_manifest(directory: Path, name: str, rows: slice) -> Path:
    """A CSV manifest over PNG files: the first ``rows`` of one seeded synthetic set (so a
    larger manifest is a superset of a smaller one: new data added, old items unchanged)."""
    from PIL import Image

    data = make_synthetic(720, 4, image_size=IMAGE_SIZE, seed=3)
    images = directory / "images"
    images.mkdir(exist_ok=True)
    lines = ["item_id,uri,label,split"]
    for i in range(len(data))[rows]:
        path = images / f"{data.item_ids[i]}.png"
        if not path.exists():
            Image.fromarray(data.decoded(i)[:, :, 0]).save(path)
        lines.append(
            f"{data.item_ids[i]},images/{path.name},{data.class_names[data.labels[i]]},{data.splits[i]}"
        )
    manifest = directory / name
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _hotswap_env(home: Path, bucket: str, endpoint: str, manifest: Path) -> dict[str, str]:
    """Settings for every flow run here (worker and CLI alike): small, real, on moto S3."""
    return {
        "HOTSWAP_HOME": str(home),
        "HOTSWAP_STORE_URI": f"s3://{bucket}/galleries",
        "HOTSWAP_S3_ENDPOINT_URL": endpoint,
        "HOTSWAP_MODEL_NAME": MODEL,
        "HOTSWAP_DATA__SOURCE": str(manifest),
        "HOTSWAP_DATA__IMAGE_SIZE": str(IMAGE_SIZE),
        "HOTSWAP_DATA__BOOTSTRAP_CLASSES": "[0, 1]",
        "HOTSWAP_TRAINING__EPOCHS": "1",
        "HOTSWAP_TRAINING__EMBEDDING_DIM": "16",
        "HOTSWAP_DPQ__EPOCHS": "1",
        "HOTSWAP_DPQ__N_BLOCKS": "2",
        "HOTSWAP_DPQ__N_CODEWORDS": "16",
        "HOTSWAP_DPQ__KMEANS_ITERS": "2",
        "HOTSWAP_DECISION__PARTIAL_FRACTIONS": "[0.5]",
        "HOTSWAP_DECISION__TIMING_REPEATS": "1",
        "HOTSWAP_DECISION__TIMING_SAMPLE": "32",
        "HOTSWAP_BACKFILL__SHARD_SIZE": "64",
        "HOTSWAP_OPS__MLFLOW_UI_URL": "http://127.0.0.1:5000",
        "HOTSWAP_COMPAT_SEARCH__ENABLED": "false",  # six trainings per refresh; it has its own tests
        "HOTSWAP_PROJECT_DIR": str(ROOT),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
    }


@dataclass
class Operations:
    server: PrefectServer
    env: dict[str, str]
    settings: HotswapSettings
    data_dir: Path
    deployments: dict[str, Any]
    worker_log: Path


def _run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def ops(
    prefect_server: PrefectServer, prefect_client, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operations]:
    data_dir = tmp_path_factory.mktemp("ops-data")
    first = _write_manifest(data_dir, "first.csv", slice(0, 480))
    home = tmp_path_factory.mktemp("ops-home")
    hotswap = _hotswap_env(home, create_bucket(s3_endpoint, prefix="ops"), s3_endpoint, first)
    env = {**prefect_server.env, **hotswap}
    # what an operator's shell has: the CLI's own defaults apply (earlier in-process CLI tests may
    # have left their console settings in this process's environment)
    env.pop("PREFECT_LOGGING_LEVEL", None)
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    _run([str(PREFECT), "work-pool", "create", POOL, "--type", "process"], env)
    _run([str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    deployments = {d.name: d for d in prefect_client.read_deployments()}
    worker_log = home / "worker.log"
    worker_env = {**env, "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process", "--limit", "2"],
            cwd=ROOT,
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    settings = HotswapSettings(
        home=home,
        store_uri=hotswap["HOTSWAP_STORE_URI"],
        s3_endpoint_url=s3_endpoint,
        model_name=MODEL,
        data={"source": str(first), "image_size": IMAGE_SIZE, "bootstrap_classes": [0, 1]},
    )
    try:
        yield Operations(prefect_server, env, settings, data_dir, deployments, worker_log)
    finally:
        stop_process_group(worker)


def _flow_runs(client, **filters: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    deployment = filters.pop("deployment_id", None)
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(**filters) if filters else None,
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])) if deployment else None,
    )


def _finished(client, flow_run_id) -> Any:
    def check():
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    run = _wait_for(check, f"flow run {flow_run_id} to finish")
    assert run.state.is_completed(), f"{run.name}: {run.state.type} {run.state.message}"
    return run


def _logs(client, flow_run_id) -> list[Any]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)


def _task_window(client, flow_run_id) -> tuple[float, float]:
    """First start and last end of a flow run's task runs (its lifecycle steps)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert runs, f"flow run {flow_run_id} ran no tasks"
    return (
        min(r.start_time.timestamp() for r in runs if r.start_time),
        max(r.end_time.timestamp() for r in runs if r.end_time),
    )


def test_a_cli_bootstrap_sends_info_logs_to_the_api_and_is_named_after_what_it_does(ops, prefect_client):
    _run([str(HOTSWAP), "bootstrap"], ops.env)
    runs = [r for r in _flow_runs(prefect_client) if r.name.startswith("bootstrap v1 of opstest (data ")]
    assert len(runs) == 1, [r.name for r in _flow_runs(prefect_client)]
    messages = [log.message for log in _logs(prefect_client, runs[0].id)]
    assert any("registered first model as version 1" in m for m in messages), messages
    assert any(log.level == 20 for log in _logs(prefect_client, runs[0].id))  # INFO reached the API
    # the MLflow side names the Prefect run that produced the model
    run = ModelRegistry.from_settings(ops.settings).client.get_run(
        ModelRegistry.from_settings(ops.settings).resolve("1").run_id
    )
    assert run.data.tags["prefect.flow_run_id"] == str(runs[0].id)
    assert run.data.tags["prefect.flow_run_url"] == f"{ops.server.ui_url}/flow-runs/flow-run/{runs[0].id}"
    # the first gallery's progress artifact has a key (so the Artifacts page lists it)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = prefect_client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id]))
    )
    assert {a.key for a in artifacts if a.type == "progress"} == {"gallery-progress-default-v1-bootstrap"}
    report = next(a for a in artifacts if a.key == f"compat-report-{MODEL}-v1")
    assert "vNone" not in report.description + report.data and "first model" in report.description


def test_registering_new_data_triggers_a_refresh_through_the_worker(ops, prefect_client):
    second = _write_manifest(ops.data_dir, "second.csv", slice(0, 720))
    expected = open_source(str(second), seed=0).version
    output = _run([str(HOTSWAP), "data", "register", str(second)], ops.env)
    assert f"registered dataset {expected}" in output

    refresh = ops.deployments["scheduled-refresh"]
    started = _wait_for(lambda: _flow_runs(prefect_client, deployment_id=refresh.id), "the triggered refresh")
    assert len(started) == 1
    assert started[0].parameters["dataset_version"] == expected
    assert started[0].parameters["data_source"] == str(second.resolve())
    run = _finished(prefect_client, started[0].id)
    assert run.name == f"refresh v2 against v1 (data {expected[:6]})"
    assert run.state.name in ("Promoted", "Staged", "Rejected") and "v2" in run.state.message

    # cross-links: the MLflow training run names this flow run; Prefect links to MLflow
    registry = ModelRegistry.from_settings(ops.settings)
    info = registry.resolve("2")
    assert info.dataset_version == expected
    tags = registry.client.get_run(info.run_id).data.tags
    assert tags["prefect.flow_run_id"] == str(run.id)
    assert tags["prefect.flow_run_url"].endswith(f"/flow-runs/flow-run/{run.id}")
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = prefect_client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
    )
    links = {a.key: a.data for a in artifacts}  # link artifacts are markdown "[text](url)"
    run_url = (
        f"http://127.0.0.1:5000/#/experiments/{registry.experiment_id}/runs/{info.run_id}"
        "?workflowType=machine_learning"  # MLflow's training view, not its GenAI overview
    )
    assert f"[MLflow run of {MODEL} v2]({run_url})" in links[f"mlflow-run-{MODEL}-v2"]
    assert f"/#/models/{MODEL}/versions/2" in links[f"model-version-{MODEL}-v2"]
    decision = next(a for a in artifacts if a.key == f"decision-report-{MODEL}-v2")
    assert "data:image/png;base64," in decision.data and run_url in decision.data
    table = next(a for a in artifacts if a.key == f"decision-{MODEL}-v2")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sum(row["chosen"] for row in rows) == 1
    assert registry.run_artifact_bytes(info.run_id, "decision/decision.png").startswith(b"\x89PNG")

    # the same data again: known, no event, no new refresh
    again = _run([str(HOTSWAP), "data", "register", str(second)], ops.env)
    assert "already registered" in again
    time.sleep(5)  # long enough for the trigger service, which reacted within seconds above
    assert len(_flow_runs(prefect_client, deployment_id=refresh.id)) == 1


def test_a_second_refresh_waits_for_the_gallery_and_never_interleaves(ops, prefect_client):
    refresh = ops.deployments["scheduled-refresh"]
    longer = {"training": {"epochs": 3}}  # a longer critical section, so the two runs surely overlap
    # both on the data registered above: its test split is the gallery the live one was synced to
    data = str(ops.data_dir / "second.csv")
    deployed = prefect_client.create_flow_run_from_deployment(
        refresh.id, parameters={"auto_promote": False, "overrides": longer, "data_source": data}
    )
    by_hand = subprocess.Popen(
        [str(HOTSWAP), "--wait", str(WAIT_S), "refresh", "--no-auto-promote"],
        cwd=ROOT,
        env={**ops.env, "HOTSWAP_TRAINING__EPOCHS": "3", "HOTSWAP_DATA__SOURCE": data},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = by_hand.communicate(timeout=WAIT_S)
    assert by_hand.returncode == 0, output
    deployed = _finished(prefect_client, deployed.id)
    manual = [
        r
        for r in _flow_runs(prefect_client)
        if r.flow_id == deployed.flow_id and r.deployment_id is None and r.id != deployed.id
    ]
    assert len(manual) == 1
    runs = sorted([deployed, manual[0]], key=lambda r: _task_window(prefect_client, r.id)[0])
    (_, end_first), (start_second, _) = (_task_window(prefect_client, r.id) for r in runs)
    assert start_second >= end_first, "the second refresh ran a step while the first still held the gallery"
    # whichever came second waited: the worker's run in its log, the CLI before its flow started
    waiting = [log for log in _logs(prefect_client, runs[1].id) if "waiting" in log.message]
    competed = (waiting and waiting[0].timestamp.timestamp() < end_first) or "waiting up to" in output
    assert competed, "the runs never competed for the gallery"
    # and neither left the gallery held
    from hotswap.components.gallery.lease import live_holder
    from hotswap.components.gallery.store_factory import open_store

    store = open_store(ops.settings.resolved_store_uri, endpoint_url=ops.settings.s3_endpoint_url)
    assert live_holder(store, ops.settings.gallery_name) is None


def test_the_promote_deployment_pauses_takes_the_typed_form_and_switches_live(ops, prefect_client):
    from hotswap.tasks.context import gallery_store

    registry = ModelRegistry.from_settings(ops.settings)
    challenger = registry.aliases()["challenger"]
    promote = ops.deployments["manual-promote"]
    # the worker reads the data registered above, whose test split the live gallery was synced to
    data = {"data": {"source": str(ops.data_dir / "second.csv")}}
    run = prefect_client.create_flow_run_from_deployment(
        promote.id, parameters={"poll_interval_seconds": 1, "overrides": data}
    )

    def paused():
        current = prefect_client.read_flow_run(run.id)
        if current.state is not None and current.state.is_final():
            raise AssertionError(f"promote ended before pausing: {current.state}")
        return current if current.state is not None and current.state.is_paused() else None

    paused_run = _wait_for(paused, "the promote run to pause for the reviewer")
    assert paused_run.name.startswith(f"promote v{challenger} over v")
    key = paused_run.state.state_details.run_input_keyset["schema"]
    schema = prefect_client.read_flow_run_input(run.id, key)
    fields = json.loads(schema)["properties"] if isinstance(schema, str) else schema["properties"]
    assert "champion" in fields["approve"]["description"] and fields["fraction"]["description"]
    announced = rf"open {re.escape(ops.server.ui_url)}/flow-runs/flow-run/{run.id} and press Resume"
    # flow logs reach the API in batches, so the pause can be seen before its log line arrives
    _wait_for(
        lambda: re.search(announced, " ".join(log.message for log in _logs(prefect_client, run.id))),
        "the paused run's log line saying where the form is",
        timeout=120,
    )

    response = prefect_client.resume_flow_run(
        run.id, run_input={"approve": True, "reason": "reviewed on the server", "backfill_mode": "full"}
    )
    assert response.status.value == "ACCEPT", response
    finished = _finished(prefect_client, run.id)
    assert finished.state.name == "Promoted" and f"v{challenger} is champion" in finished.state.message
    assert registry.aliases()["champion"] == challenger
    live = gallery_store(ops.settings).read_current(ops.settings.gallery_name)
    assert live == f"v{challenger}-full"
    assert registry.get_tags(challenger)["promotion.flow_run_url"].endswith(str(run.id))
    status = _run([str(HOTSWAP), "status"], {**ops.env, "COLUMNS": "200"})
    assert f"champion   v{challenger}" in status and f"v{challenger}" in status.split("live gallery")[1]


def test_hotswap_report_reads_a_version_from_mlflow_alone(ops):
    env = {key: value for key, value in ops.env.items() if not key.startswith("PREFECT_API")}
    env["HOTSWAP_STORE_URI"] = str(ops.data_dir / "no-store-here")  # no gallery needed
    output = _run([str(HOTSWAP), "report", "2"], {**env, "COLUMNS": "200"})
    assert "compatibility: v2 vs v1" in output and "backfill options for v2" in output
    assert "prefect.flow_run_url" in output
