"""Runs in the registry's MLflow experiment: training runs with their model, record runs, metrics.

One :class:`RegistryRuns` talks through an explicit ``MlflowClient(tracking_uri=...)`` and never
touches MLflow's global "active run" state. Every run it creates carries its owner's pid and host,
so a run left RUNNING by a killed process can be marked FAILED later (:meth:`fail_dead_runs`).
Params and metrics go in as few ``log_batch`` requests as MLflow's limits allow.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotswap.components.registry.records import (
    EXPERIMENT_KIND,
    MODEL_DIR,
    TAG_DATA_VERSION,
    TAG_EXPERIMENT_KIND,
    TAG_HOST,
    TAG_KIND,
    TAG_MODEL_NAME,
    TAG_PID,
    _tag_value,
    mask_secret,
    process_gone,
)
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    from hotswap.components.models.backbones import EmbeddingModel
    from hotswap.components.models.training import TrainHistory

_MAX_PARAMS_PER_BATCH = 100
_MAX_ENTITIES_PER_BATCH = 1000


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _epochs(history: TrainHistory | Sequence[Mapping[str, float]] | None) -> list[Mapping[str, float]]:
    if history is None:
        return []
    return list(getattr(history, "epochs", history))


class RegistryRuns:
    """The MLflow client, the experiment and the runs of one registered model."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        experiment_name: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        if not tracking_uri:
            raise ValueError("tracking_uri is required, e.g. sqlite:///<home>/mlflow.db or http://host:5000")
        if not model_name:
            raise ValueError("model_name is required")
        # MLflow writes "View run … at: <url>" to stdout when a run ends on a tracking server;
        # hotswap's commands print JSON there, so that line would break every parser of it.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if tracking_uri.startswith("sqlite:///"):
            database = Path(tracking_uri.removeprefix("sqlite:///"))
            database.parent.mkdir(parents=True, exist_ok=True)
            # Without an explicit location MLflow puts SQLite-backed artifacts in ./mlruns of
            # whatever directory the process runs in; keep them beside the database instead.
            artifact_location = artifact_location or (database.parent / "mlartifacts").resolve().as_uri()
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment_name = experiment_name or model_name
        self.artifact_location = artifact_location
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment_id: str | None = None
        self._model_exists = False

    # ------------------------------------------------------------------ experiment and runs

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment_name,
                        artifact_location=self.artifact_location,
                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
                    )
                except MlflowException as exc:  # created concurrently by another process
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    self._experiment_id = self.client.get_experiment_by_name(
                        self.experiment_name
                    ).experiment_id
            else:
                self._experiment_id = experiment.experiment_id
                if TAG_EXPERIMENT_KIND not in (experiment.tags or {}):  # made before the tag existed
                    self.client.set_experiment_tag(self._experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return self._experiment_id

    def set_run_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Tags on an existing run (e.g. the Prefect flow run that produced it); secrets masked."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, mask_secret(key, _tag_value(value)))

    def find_runs(self, kind: str, tags: Mapping[str, str] | None = None) -> list[Any]:
        """This model's runs of one ``hotswap.kind`` whose tags equal ``tags``, oldest first."""
        query = f"tags.`{TAG_KIND}` = '{kind}' AND tags.`{TAG_MODEL_NAME}` = '{self.model_name}'"
        for key, value in (tags or {}).items():
            query += f" AND tags.`{key}` = '{value}'"
        return sorted(_all_runs(self.client, self.experiment_id, query), key=lambda r: r.info.start_time)

    def _log_batch(
        self, run_id: str, params: Mapping[str, Any] | None = None, metrics: Sequence[Metric] = ()
    ) -> None:
        """Params (masked) and metrics in as few requests as MLflow's batch limits allow."""
        safe = [Param(key, mask_secret(key, value)) for key, value in _flatten(params or {}).items()]
        metrics = list(metrics)
        while safe or metrics:
            batch_params, safe = safe[:_MAX_PARAMS_PER_BATCH], safe[_MAX_PARAMS_PER_BATCH:]
            room = _MAX_ENTITIES_PER_BATCH - len(batch_params)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Scalar metrics on an existing run (e.g. quantized retrieval at each code length)."""
        timestamp = self.client.get_run(run_id).info.start_time
        self._log_batch(run_id, None, [Metric(k, float(v), timestamp, step) for k, v in metrics.items()])

    def log_training_run(
        self,
        model: EmbeddingModel,
        params: Mapping[str, Any] | None = None,
        history: TrainHistory | Sequence[Mapping[str, float]] | None = None,
        dataset_version: str = "",
        tags: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        run_name: str | None = None,
    ) -> str:
        """Log one training run and its model; returns the run id.

        ``history`` is a TrainHistory (or a list of per-epoch dicts): every term becomes the
        metric ``train.<term>`` at step = epoch index. ``metrics`` are optional final scalars.
        Param values with secret-looking keys, and credentials inside URIs, are masked.
        """
        from hotswap.components.models.backbones import model_to_bytes  # torch: only a model run needs it

        if not dataset_version:
            raise ValueError("dataset_version is required: a model must name the data it was trained on")
        run_tags = {key: mask_secret(key, _tag_value(value)) for key, value in (tags or {}).items()}
        run_tags.update(
            {TAG_KIND: "training", TAG_DATA_VERSION: dataset_version, TAG_MODEL_NAME: self.model_name}
        )
        run_tags.update(_owner_tags())
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        run_id = run.info.run_id
        try:
            spec = model.spec.model_dump()
            all_params = {**(params or {}), "dataset_version": dataset_version}
            all_params.update({f"model.{key}": value for key, value in spec.items()})
            timestamp = run.info.start_time
            logged = [
                Metric(f"train.{term}", float(value), timestamp, step)
                for step, epoch in enumerate(_epochs(history))
                for term, value in epoch.items()
            ]
            for name in ("seconds", "images_per_second"):
                if hasattr(history, name):
                    logged.append(Metric(f"train.{name}", float(getattr(history, name)), timestamp, 0))
            logged += [Metric(key, float(value), timestamp, 0) for key, value in (metrics or {}).items()]
            self._log_batch(run_id, all_params, logged)
            self._log_files(run_id, MODEL_DIR, model_to_bytes(model))
        except BaseException:
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id)
        return run_id

    def log_record_run(
        self,
        kind: str,
        run_name: str,
        files: Mapping[str, bytes],
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        directory: str | None = None,
    ) -> str:
        """A finished run that only carries a record (an audit, a decision): files, metrics, tags."""
        run_tags = {key: mask_secret(key, _tag_value(value)) for key, value in (tags or {}).items()}
        run_tags.update({TAG_KIND: kind, TAG_MODEL_NAME: self.model_name, **_owner_tags()})
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        run_id = run.info.run_id
        try:
            timestamp = run.info.start_time
            self._log_batch(
                run_id, None, [Metric(k, float(v), timestamp, 0) for k, v in (metrics or {}).items()]
            )
            self._log_files(run_id, directory, files)
        except BaseException:
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id)
        return run_id

    def _log_files(self, run_id: str, directory: str | None, files: Mapping[str, bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="hotswap-artifacts-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self.client.log_artifacts(run_id, tmp, artifact_path=directory)

    def fail_dead_runs(self) -> list[str]:
        """Mark FAILED the runs left RUNNING by a process of this host that no longer exists.

        A killed process cannot end its MLflow run; without this the run would stay RUNNING
        forever. Runs of other hosts (or without owner tags) are left alone: their liveness
        cannot be checked from here. Returns the run ids marked.
        """
        host = socket.gethostname()
        query = f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
        marked = []
        for run in _all_runs(self.client, self.experiment_id, query):
            if process_gone(run.data.tags.get(TAG_PID)):
                self.client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
                marked.append(run.info.run_id)
        return marked


def _owner_tags() -> dict[str, str]:
    """Which process created a run, so a run it left RUNNING when killed can be told apart."""
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


def _all_runs(client: MlflowClient, experiment_id: str, query: str) -> Iterable[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, page_token=token)
        yield from page
        token = page.token
        if not token:
            return
