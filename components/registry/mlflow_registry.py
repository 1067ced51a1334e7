"""The model registry: MLflow as the single record of which model is live and how it was made.

One :class:`ModelRegistry` wraps one registered model in one MLflow tracking server. It talks
through an explicit ``MlflowClient(tracking_uri=...)`` and never touches MLflow's global
"active run" state, so two registries (say, a test's SQLite one and a server) can live in one
process and a Prefect task can use it from any thread.

What is stored where (see docs/registry.md):
- a training run per model: parameters, per-epoch loss terms (``train.<term>``, step = epoch),
  the data version, and the model as ``model/model.pt`` (a plain state_dict) + ``model/spec.json``;
- a registered model version per run, source ``<run artifact uri>/model``, tagged ``data.version``;
- aliases ``champion`` (live), ``challenger`` (candidate) and ``previous`` (the champion before);
- a compatibility run per report: the matrix as metrics, thresholds as params, and
  ``compat/report.json`` / ``report.md`` / ``heatmap.png``; the gated version carries the tags
  ``compat.blessed``, ``compat.old_version`` and ``compat.report_uri`` (a ``runs:/`` URI);
- small named numpy artifacts beside a model (old-class prototypes, DPQ codebooks).

Models are not logged with ``mlflow.pytorch.log_model`` (MLflow 3 would store a pt2 graph and a
pickle fallback); they load through ``model_from_bytes``, i.e. ``torch.load(weights_only=True)``,
so an artifact carrying a pickle payload is refused, never executed.

Embedded default: ``sqlite:///<home>/mlflow.db`` with artifacts in ``<home>/mlartifacts``.
Production: an ``http(s)://`` MLflow server (PostgreSQL backend, S3 artifacts behind it).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from hotswap.components.compat.report import CompatibilityReport
from hotswap.components.core.faults import fault_point
from hotswap.components.core.settings import mask_uri_credentials
from hotswap.components.models.backbones import (
    SPEC_FILE,
    WEIGHTS_FILE,
    EmbeddingModel,
    model_from_bytes,
    model_to_bytes,
)
from hotswap.components.models.model_spec import is_user_spec, parse_spec, stored_files
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    from hotswap.components.models.training import TrainHistory

MODEL_DIR = "model"
REPORT_DIR = "compat"
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
MANAGED_ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)

TAG_BLESSED = "compat.blessed"
TAG_OLD_VERSION = "compat.old_version"
TAG_REPORT_URI = "compat.report_uri"
TAG_BACKFILL = "backfill.decision"
TAG_DATA_VERSION = "data.version"
TAG_KIND = "hotswap.kind"
TAG_MODEL_NAME = "hotswap.model_name"
TAG_NEW_VERSION = "hotswap.new_version"
TAG_BASELINE_VERSION = "hotswap.old_version"
# MLflow 3's UI picks an experiment's default page from this tag; training runs, not the GenAI overview.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_PID = "hotswap.pid"
TAG_HOST = "hotswap.host"

_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|credential|access_key|api_key|private", re.IGNORECASE)
_MAX_PARAMS_PER_BATCH = 100
_MAX_ENTITIES_PER_BATCH = 1000


class RegistryError(RuntimeError):
    """The registry is missing something asked for, or holds something hotswap did not write."""


class VersionNotFoundError(RegistryError, LookupError):
    """No model version answers to the given version number, alias or URI."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version as hotswap sees it."""

    name: str
    version: str
    run_id: str
    source: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def dataset_version(self) -> str | None:
        return self.tags.get(TAG_DATA_VERSION)

    @property
    def blessed(self) -> bool | None:
        """The recorded blessing, or None when no compatibility report was logged yet."""
        value = self.tags.get(TAG_BLESSED)
        return None if value is None else value == "true"


def mask_secret(key: str, value: Any) -> str:
    """A value safe for params and logs: secret-looking keys blanked, URI credentials masked."""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, list | dict)
        else str(value)
    )
    if _SECRET_KEY.search(key):
        return "***"
    return mask_uri_credentials(text) if "://" in text else text


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _tag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _artifact_path(path: str) -> str:
    """Validate a run-relative artifact path: relative, no '..', no empty parts."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"artifact path {path!r} must be a relative POSIX path")
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".", "") for part in parts):
        raise ValueError(f"artifact path {path!r} may not contain '.' or '..' parts")
    return "/".join(parts)


def _epochs(history: TrainHistory | Sequence[Mapping[str, float]] | None) -> list[Mapping[str, float]]:
    if history is None:
        return []
    return list(getattr(history, "epochs", history))


class ModelRegistry:
    """Training runs, versions, aliases, tags, reports and artifacts of one registered model."""

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

    @classmethod
    def from_settings(cls, settings: Any) -> ModelRegistry:
        """The registry named by ``HotswapSettings`` (SQLite under home unless a tracking URI is set)."""
        return cls(settings.resolved_tracking_uri, settings.model_name)

    def __repr__(self) -> str:
        return f"ModelRegistry({mask_uri_credentials(self.tracking_uri)!r}, {self.model_name!r})"

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

    # ------------------------------------------------------------------ versions

    def _ensure_registered_model(self) -> None:
        if self._model_exists:
            return
        try:
            self.client.create_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        self._model_exists = True

    def register(
        self, run_id: str, tags: Mapping[str, Any] | None = None, description: str | None = None
    ) -> str:
        """Register the model logged by ``run_id`` as a new version; returns the version number.

        Only finished hotswap training runs qualify: :meth:`log_training_run` marks a run
        FINISHED after its model files are stored (FAILED otherwise), so no artifact listing is needed.
        """
        run = self.client.get_run(run_id)
        if run.data.tags.get(TAG_KIND) != "training" or run.info.status != "FINISHED":
            raise RegistryError(
                f"run {run_id} has no logged model: it is not a finished hotswap training run "
                f"(kind={run.data.tags.get(TAG_KIND)!r}, status={run.info.status})"
            )
        version_tags = {key: mask_secret(key, _tag_value(value)) for key, value in (tags or {}).items()}
        if TAG_DATA_VERSION in run.data.tags:
            version_tags.setdefault(TAG_DATA_VERSION, run.data.tags[TAG_DATA_VERSION])
        self._ensure_registered_model()
        version = self.client.create_model_version(
            self.model_name,
            source=f"{run.info.artifact_uri}/{MODEL_DIR}",
            run_id=run_id,
            tags=version_tags,
            description=description,
        )
        return str(version.version)

    def _info(self, version: Any) -> ModelVersionInfo:
        return ModelVersionInfo(
            name=version.name,
            version=str(version.version),
            run_id=version.run_id or "",
            source=version.source,
            aliases=tuple(sorted(version.aliases or ())),
            tags=dict(version.tags or {}),
        )

    def resolve(self, ref: str | int | ModelVersionInfo = CHAMPION) -> ModelVersionInfo:
        """A version from ``models:/<name>@<alias>``, ``models:/<name>/<version>``, an alias or a number."""
        if isinstance(ref, ModelVersionInfo):
            ref = ref.version
        text = str(ref)
        if text.startswith("models:/"):
            body = text.removeprefix("models:/")
            name, sep, selector = body.partition("@") if "@" in body else body.rpartition("/")
            if not sep or not name or not selector:
                raise ValueError(
                    f"model URI {text!r} must look like models:/<name>@<alias> or models:/<name>/<n>"
                )
            if name != self.model_name:
                raise ValueError(
                    f"model URI {text!r} names {name!r}, but this registry holds {self.model_name!r}"
                )
            text = selector
        try:
            if text.isdigit():
                return self._info(self.client.get_model_version(self.model_name, text))
            return self._info(self.client.get_model_version_by_alias(self.model_name, text))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise VersionNotFoundError(
                    f"registered model {self.model_name!r} has no version or alias {str(ref)!r}"
                ) from exc
            raise

    def list_versions(self) -> list[ModelVersionInfo]:
        """Every version of this model, oldest first."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        return sorted((self._info(v) for v in found), key=lambda info: int(info.version))

    # ------------------------------------------------------------------ aliases

    def aliases(self) -> dict[str, str]:
        """Alias → version of this model (empty when nothing is registered yet)."""
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(version) for alias, version in (registered.aliases or {}).items()}

    def set_alias(self, alias: str, version: str | int) -> None:
        self.resolve(str(version))  # clear error for a version that does not exist
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def get_alias(self, alias: str) -> ModelVersionInfo | None:
        """The version behind ``alias``, or None when the alias is not set."""
        if alias not in self.aliases():
            return None
        return self.resolve(alias)

    def delete_alias(self, alias: str) -> None:
        if alias in self.aliases():
            self.client.delete_registered_model_alias(self.model_name, alias)

    def promote(self, version: str | int) -> dict[str, str]:
        """Make ``version`` the champion; the old champion becomes ``previous``. Returns the new aliases.

        ``previous`` is moved before ``champion``, so a crash in between leaves both on the old
        champion (harmless) rather than losing it. A challenger alias on ``version`` is removed.
        """
        version = self.resolve(str(version)).version
        current = self.aliases()
        old = current.get(CHAMPION)
        if old != version:
            if old is not None:
                self.client.set_registered_model_alias(self.model_name, PREVIOUS, old)
                fault_point("switch:previous-moved")
            self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
            fault_point("switch:champion-moved")
        if current.get(CHALLENGER) == version:
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
        return self.aliases()

    def restore_aliases(self, snapshot: Mapping[str, str]) -> None:
        """Put champion/challenger/previous back as in ``snapshot`` (from :meth:`aliases`); for rollbacks."""
        current = self.aliases()
        for alias in MANAGED_ALIASES:
            if alias in snapshot and current.get(alias) != str(snapshot[alias]):
                self.client.set_registered_model_alias(self.model_name, alias, str(snapshot[alias]))
            elif alias not in snapshot and alias in current:
                self.client.delete_registered_model_alias(self.model_name, alias)

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
            if _process_gone(run.data.tags.get(TAG_PID)):
                self.client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
                marked.append(run.info.run_id)
        return marked

    # ------------------------------------------------------------------ tags

    def set_tags(self, version: str | int | ModelVersionInfo, tags: Mapping[str, Any]) -> None:
        """Set model-version tags (bools become 'true'/'false', dicts and lists JSON)."""
        info = self.resolve(version)
        for key, value in tags.items():
            self.client.set_model_version_tag(
                self.model_name, info.version, key, mask_secret(key, _tag_value(value))
            )

    def get_tags(self, version: str | int | ModelVersionInfo) -> dict[str, str]:
        return self.resolve(version).tags

    # ------------------------------------------------------------------ artifacts and models

    def run_artifact_bytes(self, run_id: str, path: str) -> bytes:
        """The bytes of one artifact of a run."""
        path = _artifact_path(path)
        with tempfile.TemporaryDirectory(prefix="hotswap-download-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except MlflowException as exc:
                raise RegistryError(f"run {run_id} has no artifact {path!r}: {exc.message}") from exc
            return Path(local).read_bytes()

    def log_artifact_bytes(self, run_id: str, path: str, data: bytes) -> None:
        """Store ``data`` as the run artifact ``path`` (e.g. ``codebooks/dpq.npy``), replacing any old one."""
        parent, _, name = _artifact_path(path).rpartition("/")
        self._log_files(run_id, parent or None, {name: bytes(data)})

    def load_artifact_bytes(self, version: str | int | ModelVersionInfo, path: str) -> bytes:
        """An artifact stored beside a model version (in the run that trained it)."""
        return self.run_artifact_bytes(self.resolve(version).run_id, path)

    def log_array(self, run_id: str, path: str, array: np.ndarray) -> None:
        """A numpy array as a ``.npy`` artifact, written without pickle."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        self.log_artifact_bytes(run_id, path, buffer.getvalue())

    def load_array(self, version: str | int | ModelVersionInfo, path: str) -> np.ndarray:
        """A ``.npy`` artifact beside a model version; object (pickled) arrays are refused."""
        data = self.load_artifact_bytes(version, path)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise RegistryError(f"artifact {path!r} is not a plain numpy array: {exc}") from exc

    def load_model(self, ref: str | int | ModelVersionInfo = CHAMPION) -> EmbeddingModel:
        """The model of a version or alias, rebuilt from spec + weights (weights_only; never unpickled).

        Raises ModelFormatError when the stored weights are not a plain state_dict.
        """
        info = self.resolve(ref)
        if not info.run_id or not info.source.rstrip("/").endswith(f"/{MODEL_DIR}"):
            raise RegistryError(
                f"{info.uri} was not registered by hotswap (source {mask_uri_credentials(info.source)!r})"
            )
        spec = self.run_artifact_bytes(info.run_id, f"{MODEL_DIR}/{SPEC_FILE}")
        names = (WEIGHTS_FILE,)
        if is_user_spec(spec):  # the team's own architecture: safetensors (+ .pt2), see model_spec.py
            names = tuple(n for n in stored_files(parse_spec(spec, info.uri)) if n != SPEC_FILE)
        files = {name: self.run_artifact_bytes(info.run_id, f"{MODEL_DIR}/{name}") for name in names}
        return model_from_bytes({SPEC_FILE: spec, **files}, source=info.uri)

    # ------------------------------------------------------------------ compatibility reports

    def log_report(
        self,
        report: CompatibilityReport,
        tag_version: bool = True,
        run_tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Log a report as its own run (metrics, thresholds, JSON, markdown, heatmap); returns its URI.

        With ``tag_version`` the new version gets ``compat.blessed``, ``compat.old_version`` and
        ``compat.report_uri`` — the gate's record. An audit that re-checks old pairs passes False.
        """
        if report.model_name not in (None, self.model_name):
            raise ValueError(
                f"report is about model {report.model_name!r}, this registry is {self.model_name!r}"
            )
        new = self.resolve(report.new_version)
        if report.old_version is not None:
            self.resolve(report.old_version)
        old_label = report.old_version or "none"
        tags = {
            TAG_KIND: "compatibility",
            TAG_MODEL_NAME: self.model_name,
            TAG_NEW_VERSION: new.version,
            TAG_BASELINE_VERSION: old_label,
            TAG_DATA_VERSION: report.data_version,
            TAG_BLESSED: _tag_value(report.blessed),
        }
        tags.update({key: mask_secret(key, _tag_value(value)) for key, value in (run_tags or {}).items()})
        run = self.client.create_run(
            self.experiment_id, run_name=f"compat-v{new.version}-vs-{old_label}", tags=tags
        )
        run_id = run.info.run_id
        try:
            timestamp = run.info.start_time
            metrics = [Metric(key, value, timestamp, 0) for key, value in report.flat_metrics().items()]
            self._log_batch(run_id, {"thresholds": report.thresholds.model_dump()}, metrics)
            self._log_files(
                run_id,
                REPORT_DIR,
                {
                    "report.json": report.to_json().encode(),
                    "report.md": report.to_markdown().encode(),
                    "heatmap.png": report.heatmap_png(),
                },
            )
        except BaseException:
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id)
        uri = f"runs:/{run_id}/{REPORT_DIR}/report.json"
        if tag_version:
            self.set_tags(
                new,
                {TAG_BLESSED: report.blessed, TAG_OLD_VERSION: old_label, TAG_REPORT_URI: uri},
            )
        return uri

    def load_report_uri(self, uri: str) -> CompatibilityReport:
        """Read a report back from a ``runs:/<run_id>/<path>`` URI: no recomputation."""
        match = re.fullmatch(r"runs:/([0-9a-zA-Z]+)/(.+)", uri)
        if not match:
            raise ValueError(f"report URI {uri!r} must look like runs:/<run_id>/<path>")
        data = self.run_artifact_bytes(match.group(1), match.group(2))
        return CompatibilityReport.from_json(data, source=uri)

    def load_report(self, ref: str | int | ModelVersionInfo = CHALLENGER) -> CompatibilityReport:
        """The gate's report of a version (the one its ``compat.report_uri`` tag points at)."""
        info = self.resolve(ref)
        uri = info.tags.get(TAG_REPORT_URI)
        if not uri:
            raise RegistryError(f"{info.uri} has no compatibility report (tag {TAG_REPORT_URI} is not set)")
        return self.load_report_uri(uri)

    def list_reports(self, new_version: str | int | None = None) -> list[CompatibilityReport]:
        """Every logged report of this model (optionally of one new version), oldest first; for audits."""
        query = f"tags.`{TAG_KIND}` = 'compatibility' AND tags.`{TAG_MODEL_NAME}` = '{self.model_name}'"
        if new_version is not None:
            query += f" AND tags.`{TAG_NEW_VERSION}` = '{new_version}'"
        runs = _all_runs(self.client, self.experiment_id, query)
        return [
            self.load_report_uri(f"runs:/{run.info.run_id}/{REPORT_DIR}/report.json")
            for run in sorted(runs, key=lambda r: r.info.start_time)
        ]


def _owner_tags() -> dict[str, str]:
    """Which process created a run, so a run it left RUNNING when killed can be told apart."""
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


def _process_gone(pid: str | None) -> bool:
    try:
        os.kill(int(pid or ""), 0)
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:
        return False
    return False


def _all_runs(client: MlflowClient, experiment_id: str, query: str) -> Iterable[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, page_token=token)
        yield from page
        token = page.token
        if not token:
            return
