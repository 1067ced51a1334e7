"""The MLflow registry adapter, run against the embedded SQLite store and a real MLflow server.

Every test taking ``model_registry`` runs twice: on ``sqlite:///`` with local artifacts, and on an
``mlflow server`` whose backend store is PostgreSQL and whose artifacts live on moto's S3 server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hotswap.components.compat.gate import build_report
from hotswap.components.models.backbones import ModelFormatError
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.components.registry.records import (
    TAG_BLESSED,
    TAG_DATA_VERSION,
    TAG_OLD_VERSION,
    TAG_REPORT_URI,
    RegistryError,
    VersionNotFoundError,
    mask_secret,
)

from tests.fixtures.mlflow import tiny_model
from tests.fixtures.s3 import s3_client

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = torch.linspace(0, 1, 2 * 16 * 16).reshape(2, 1, 16, 16)

pytestmark = pytest.mark.slow


def _matrix(new_old_map: float) -> dict[str, dict[str, float]]:
    return {
        "old/old": {"map": 0.5, "top1": 0.7, "top5": 0.9},
        "new/new": {"map": 0.7, "top1": 0.8, "top5": 0.95},
        "new/old": {"map": new_old_map, "top1": 0.75, "top5": 0.92},
        "old/new": {"map": 0.55, "top1": 0.72, "top5": 0.91},
    }


def _register(registry: ModelRegistry, seed: int, data: str = "data-v1") -> str:
    return registry.register(registry.log_training_run(tiny_model(seed), dataset_version=data))


def test_training_run_records_params_epoch_metrics_data_version_and_masks_secrets(
    model_registry: ModelRegistry,
) -> None:
    run_id = model_registry.log_training_run(
        tiny_model(),
        params={
            "lr": 0.01,
            "store": {"uri": "postgresql://alice:hunter2@db.internal/mlflow"},
            "aws_secret_access_key": "s3cr3t-value",
        },
        history=[{"ce": 1.5, "loss": 1.5}, {"ce": 1.0, "loss": 1.0}, {"ce": 0.5, "loss": 0.5}],
        dataset_version="mnist5k-abc123",
        metrics={"val.map": 0.8},
    )
    run = model_registry.client.get_run(run_id)
    params = run.data.params
    assert params["lr"] == "0.01" and params["dataset_version"] == "mnist5k-abc123"
    assert params["model.arch"] == "small" and params["model.embedding_dim"] == "8"
    assert params["store.uri"] == "postgresql://***@db.internal/mlflow"
    assert params["aws_secret_access_key"] == "***"
    assert not any("hunter2" in v or "s3cr3t" in v for v in params.values())
    history = model_registry.client.get_metric_history(run_id, "train.ce")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 1.5),
        (1, 1.0),
        (2, 0.5),
    ]
    assert run.data.metrics["val.map"] == 0.8
    assert run.data.tags[TAG_DATA_VERSION] == "mnist5k-abc123" and run.info.status == "FINISHED"
    logged = {f.path for f in model_registry.client.list_artifacts(run_id, "model")}
    assert logged == {"model/model.pt", "model/spec.json"}


def test_register_resolve_and_list_versions(model_registry: ModelRegistry) -> None:
    name = model_registry.model_name
    first, second = _register(model_registry, 1, "data-v1"), _register(model_registry, 2, "data-v2")
    assert (first, second) == ("1", "2")
    assert [v.version for v in model_registry.list_versions()] == ["1", "2"]
    model_registry.set_alias("challenger", second)
    by_alias = model_registry.resolve(f"models:/{name}@challenger")
    assert (
        by_alias.version == "2"
        and by_alias.dataset_version == "data-v2"
        and by_alias.aliases == ("challenger",)
    )
    assert model_registry.resolve(f"models:/{name}/1").dataset_version == "data-v1"
    assert model_registry.resolve(1).run_id == model_registry.resolve("1").run_id
    assert model_registry.get_alias("champion") is None
    with pytest.raises(VersionNotFoundError, match="champion"):
        model_registry.resolve("champion")
    with pytest.raises(VersionNotFoundError, match="'7'"):
        model_registry.set_alias("champion", 7)
    with pytest.raises(ValueError, match="names 'other'"):
        model_registry.resolve("models:/other@champion")
    bare_run = model_registry.client.create_run(model_registry.experiment_id).info.run_id
    with pytest.raises(RegistryError, match="no logged model"):
        model_registry.register(bare_run)


def test_promotion_moves_champion_to_previous_and_rolls_back(model_registry: ModelRegistry) -> None:
    run_id = model_registry.log_training_run(
        tiny_model(), dataset_version="d"
    )  # aliases need versions, not runs
    v1, v2, v3 = (model_registry.register(run_id) for _ in range(3))
    assert model_registry.promote(v1) == {"champion": v1}
    model_registry.set_alias("challenger", v2)
    snapshot = model_registry.aliases()
    assert model_registry.promote(v2) == {"champion": v2, "previous": v1}
    assert model_registry.promote(v3) == {"champion": v3, "previous": v2}
    assert model_registry.get_alias("previous").version == v2
    model_registry.restore_aliases(snapshot)
    assert model_registry.aliases() == {"champion": v1, "challenger": v2}


def test_tags_round_trip(model_registry: ModelRegistry, registered_version: str) -> None:
    decision = {"option": "partial", "fraction": 0.25}
    model_registry.set_tags(registered_version, {"backfill.decision": decision, TAG_BLESSED: True})
    tags = model_registry.get_tags(registered_version)
    assert json.loads(tags["backfill.decision"]) == decision and tags[TAG_BLESSED] == "true"
    assert model_registry.resolve(registered_version).blessed is True


def test_model_logged_by_hotswap_loads_in_a_fresh_process_from_its_alias(
    model_registry: ModelRegistry, champion_alias: str
) -> None:
    model = model_registry.load_model(champion_alias)
    expected = tiny_model(seed=1).embed(PROBE).detach().numpy()  # the weights registered_version logged
    np.testing.assert_array_equal(model.embed(PROBE).detach().numpy(), expected)
    script = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from hotswap.components.registry.mlflow_registry import ModelRegistry\n"
        "uri, name = sys.argv[1], sys.argv[2]\n"
        "model = ModelRegistry(uri, name).load_model(f'models:/{name}@champion')\n"
        "probe = torch.linspace(0, 1, 2 * 16 * 16).reshape(2, 1, 16, 16)\n"
        "print(json.dumps(model.embed(probe).detach().tolist()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, model_registry.tracking_uri, model_registry.model_name],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(fresh, expected, rtol=0, atol=1e-6)


class _Payload:
    """A pickle that touches ``marker`` when unpickled: what a tampered model.pt would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tampered_artifact_with_pickle_payload_is_refused_not_executed(
    model_registry: ModelRegistry, registered_version: str, tmp_path: Path
) -> None:
    # The payload is live: an ordinary unpickling load would run it.
    armed = tmp_path / "armed"
    torch.save({"weights": _Payload(armed)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert armed.exists()

    marker = tmp_path / "pwned"
    buffer = tmp_path / "evil.pt"
    torch.save({"weights": _Payload(marker)}, buffer)
    run_id = model_registry.resolve(registered_version).run_id
    model_registry.log_artifact_bytes(run_id, "model/model.pt", buffer.read_bytes())
    with pytest.raises(ModelFormatError, match="weights-only"):
        model_registry.load_model(registered_version)
    assert not marker.exists()


def test_report_reads_back_from_mlflow_alone_and_says_why_it_failed(model_registry: ModelRegistry) -> None:
    old, new = _register(model_registry, 1), _register(model_registry, 2)
    report = build_report(
        _matrix(new_old_map=0.45), old, new, "data-v1", model_name=model_registry.model_name
    )
    uri = model_registry.log_report(report)

    reader = ModelRegistry(model_registry.tracking_uri, model_registry.model_name)  # nothing shared in memory
    tags = reader.get_tags(new)
    assert (tags[TAG_BLESSED], tags[TAG_OLD_VERSION], tags[TAG_REPORT_URI]) == ("false", old, uri)
    again = reader.load_report(new)
    assert again == report and not again.blessed
    assert any("cross_test failed: new/old mAP 0.4500" in reason for reason in again.reasons)
    report_run = uri.split("/")[1]
    assert reader.run_artifact_bytes(report_run, "compat/heatmap.png").startswith(b"\x89PNG")
    assert "NOT BLESSED" in reader.run_artifact_bytes(report_run, "compat/report.md").decode()
    assert reader.client.get_run(report_run).data.metrics["new_old.map"] == 0.45

    audit = build_report(_matrix(new_old_map=0.6), old, new, "data-v2")
    reader.log_report(audit, tag_version=False)
    assert [r.blessed for r in reader.list_reports(new_version=new)] == [False, True]
    assert reader.load_report(new) == report  # the gate's record is untouched by the audit
    with pytest.raises(RegistryError, match="no compatibility report"):
        reader.load_report(old)


def test_named_arrays_beside_a_model_version(model_registry: ModelRegistry, registered_version: str) -> None:
    prototypes = np.arange(12, dtype=np.float32).reshape(3, 4)
    run_id = model_registry.resolve(registered_version).run_id
    model_registry.log_array(run_id, "prototypes/old.npy", prototypes)
    model_registry.log_artifact_bytes(run_id, "codebooks/dpq.bin", b"\x00\x01")
    np.testing.assert_array_equal(
        model_registry.load_array(registered_version, "prototypes/old.npy"), prototypes
    )
    assert model_registry.load_artifact_bytes(registered_version, "codebooks/dpq.bin") == b"\x00\x01"
    with pytest.raises(ValueError, match="'..'"):
        model_registry.log_artifact_bytes(run_id, "../escape.bin", b"x")
    with pytest.raises(RegistryError, match="missing.npy"):
        model_registry.load_array(registered_version, "missing.npy")


def test_server_keeps_artifacts_on_s3(mlflow_server, s3_endpoint: str) -> None:
    registry = ModelRegistry(mlflow_server.uri, "s3-check-model")
    version = _register(registry, 1)
    s3 = s3_client(s3_endpoint)
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=mlflow_server.bucket, Prefix="mlflow/").get("Contents", [])
    ]
    run_id = registry.resolve(version).run_id
    assert any(key.endswith(f"{run_id}/artifacts/model/model.pt") for key in keys), keys


def test_secret_masking() -> None:
    assert mask_secret("db_password", "x") == "***"
    assert mask_secret("tracking_uri", "http://u:p@host:5000") == "http://***@host:5000"
    assert mask_secret("epochs", 8) == "8"
