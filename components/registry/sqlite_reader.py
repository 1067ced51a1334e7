"""The registry read straight from MLflow's SQLite database, for commands that only look.

``hotswap status``, ``search`` and ``report`` read aliases, version tags and a few small
artifacts. Through MLflow that costs its import (seconds on an idle machine, tens of seconds on a
loaded one) before the first row is read. For the embedded default — ``sqlite:///<home>/mlflow.db``
with artifacts in ``<home>/mlartifacts`` — the same rows are read here with :mod:`sqlite3` in
read-only mode and the artifacts as local files: the MLflow database stays the one source of
truth (there is no copy that could go stale), and nothing is written.

The reader uses a handful of MLflow's tables (``registered_model_aliases``, ``model_versions``,
``model_version_tags``, ``runs``, ``tags``, ``experiments``). :func:`open_reader` checks that
they hold the columns read here and otherwise, like for an ``http(s)://`` tracking server or
artifacts that are not local files, falls back to the MLflow client — slower, never wrong.
"""

from __future__ import annotations

import socket
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hotswap.components.registry.reading import RegistryReads, artifact_path, model_selector
from hotswap.components.registry.records import (
    CHAMPION,
    TAG_HOST,
    TAG_PID,
    ModelVersionInfo,
    RegistryError,
    VersionNotFoundError,
    process_gone,
)

#: The columns read here, by table: a database without them is read through MLflow instead.
COLUMNS = {
    "registered_model_aliases": {"name", "alias", "version"},
    "model_versions": {"name", "version", "run_id", "source", "current_stage"},
    "model_version_tags": {"name", "version", "key", "value"},
    "runs": {"run_uuid", "experiment_id", "status", "lifecycle_stage", "artifact_uri"},
    "tags": {"run_uuid", "key", "value"},
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
}
DELETED_STAGE = "Deleted_Internal"  # how MLflow marks a deleted model version
DEFAULT_WORKSPACE = "default"  # hotswap never uses MLflow workspaces


class SqliteRegistryReader(RegistryReads):
    """Read-only view of one registered model in an MLflow SQLite database (see module doc)."""

    def __init__(self, database: Path, model_name: str, experiment_name: str | None = None) -> None:
        self.database = Path(database)
        self.model_name = model_name
        self.experiment_name = experiment_name or model_name
        self._workspace: bool | None = None
        self._fallback: Any = None

    def _connect(self) -> sqlite3.Connection:
        # mode=ro: never creates or changes the file; a writer's lock is waited for, not broken
        connection = sqlite3.connect(f"{self.database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        return connection

    def _query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        with closing(self._connect()) as connection:
            return connection.execute(sql, params).fetchall()

    def schema_matches(self) -> bool:
        """Whether every table read here holds the columns read (MLflow's schema of this release)."""
        with closing(self._connect()) as connection:
            for table, wanted in COLUMNS.items():
                found = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
                if not wanted <= found:
                    return False
            versions = {row["name"] for row in connection.execute("PRAGMA table_info(model_versions)")}
        self._workspace = "workspace" in versions
        return True

    def _in_workspace(self, table: str = "") -> str:
        if self._workspace is None:
            self.schema_matches()
        if not self._workspace:
            return ""
        return f" AND {table + '.' if table else ''}workspace = '{DEFAULT_WORKSPACE}'"

    # ------------------------------------------------------------------ versions and aliases

    def aliases(self) -> dict[str, str]:
        """Alias → version of this model (empty when nothing is registered yet)."""
        rows = self._query(
            f"SELECT alias, version FROM registered_model_aliases WHERE name = ?{self._in_workspace()}",
            self.model_name,
        )
        return {row["alias"]: str(row["version"]) for row in rows}

    def list_versions(self) -> list[ModelVersionInfo]:
        """Every version of this model, oldest first (what the MLflow registry lists)."""
        rows = self._query(
            "SELECT version FROM model_versions WHERE name = ?"
            f" AND COALESCE(current_stage, '') != ?{self._in_workspace()}",
            self.model_name,
            DELETED_STAGE,
        )
        return [self.resolve(version) for version in sorted(int(row["version"]) for row in rows)]

    def resolve(self, ref: str | int | ModelVersionInfo = CHAMPION) -> ModelVersionInfo:
        """A version from a number, an alias or a ``models:/`` URI, as the MLflow registry gives it."""
        if isinstance(ref, ModelVersionInfo):
            ref = ref.version
        text = model_selector(str(ref), self.model_name)
        version = text if text.isdigit() else self.aliases().get(text)
        rows = []
        if version is not None:
            rows = self._query(
                "SELECT version, run_id, source FROM model_versions WHERE name = ? AND version = ?"
                f" AND COALESCE(current_stage, '') != ?{self._in_workspace()}",
                self.model_name,
                int(version),
                DELETED_STAGE,
            )
        if not rows:
            raise VersionNotFoundError(
                f"registered model {self.model_name!r} has no version or alias {str(ref)!r}"
            )
        row = rows[0]
        tags = self._query(
            f"SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?{self._in_workspace()}",
            self.model_name,
            row["version"],
        )
        return ModelVersionInfo(
            name=self.model_name,
            version=str(row["version"]),
            run_id=row["run_id"] or "",
            source=row["source"] or "",
            aliases=tuple(sorted(alias for alias, v in self.aliases().items() if v == str(row["version"]))),
            tags={tag["key"]: tag["value"] for tag in tags},
        )

    # ------------------------------------------------------------------ artifacts

    def run_artifact_bytes(self, run_id: str, path: str) -> bytes:
        """One artifact of a run: a local file when the run's artifacts are local, else via MLflow."""
        path = artifact_path(path)
        rows = self._query("SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)
        if not rows:
            raise RegistryError(f"run {run_id} has no artifact {path!r}: no such run")
        root = local_artifact_root(rows[0]["artifact_uri"] or "")
        if root is None:  # artifacts on S3 or behind a server: MLflow knows how to reach them
            return self._mlflow().run_artifact_bytes(run_id, path)
        try:
            return (root / path).read_bytes()
        except OSError as exc:
            raise RegistryError(f"run {run_id} has no artifact {path!r}: {exc.strerror or exc}") from exc

    def _mlflow(self) -> Any:
        if self._fallback is None:
            from hotswap.components.registry.mlflow_registry import ModelRegistry

            uri = f"sqlite:///{self.database}"
            self._fallback = ModelRegistry(uri, self.model_name, self.experiment_name)
        return self._fallback

    # ------------------------------------------------------------------ runs left by killed processes

    def dead_runs(self) -> list[str]:
        """Runs of this model's experiment left RUNNING by a process of this host that is gone:
        what :meth:`RegistryRuns.fail_dead_runs` would mark FAILED (nothing is marked here)."""
        rows = self._query(
            "SELECT runs.run_uuid AS run_id, pid.value AS pid FROM runs"
            " JOIN experiments ON experiments.experiment_id = runs.experiment_id"
            " JOIN tags AS host ON host.run_uuid = runs.run_uuid AND host.key = ?"
            " LEFT JOIN tags AS pid ON pid.run_uuid = runs.run_uuid AND pid.key = ?"
            " WHERE experiments.name = ? AND runs.status = 'RUNNING' AND runs.lifecycle_stage = 'active'"
            f" AND host.value = ?{self._in_workspace('experiments')}",
            TAG_HOST,
            TAG_PID,
            self.experiment_name,
            socket.gethostname(),
        )
        return [row["run_id"] for row in rows if process_gone(row["pid"])]


def local_artifact_root(uri: str) -> Path | None:
    """The directory of a ``file:`` (or plain path) artifact URI; None for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def open_reader(settings: Any) -> SqliteRegistryReader | None:
    """A reader of the home's SQLite registry, or None when it cannot serve: another tracking
    URI, no database yet, or a schema other than the one read here (read through MLflow then)."""
    database = settings.local_tracking_db
    if database is None or not Path(database).is_file():
        return None
    reader = SqliteRegistryReader(Path(database), settings.model_name)
    try:
        return reader if reader.schema_matches() else None
    except sqlite3.Error:
        return None


def registry_for_reading(settings: Any) -> RegistryReads:
    """What a read-only command reads the registry through: the SQLite reader where it serves,
    the MLflow-backed registry otherwise."""
    reader = open_reader(settings)
    if reader is not None:
        return reader
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    return ModelRegistry.from_settings(settings)
