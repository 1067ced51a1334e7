"""Artifacts of runs through MLflow: read by run and path, written as files of a run.

The reads built on these (artifacts beside a version, numpy arrays, the model, reports) live in
components/registry/reading.py, shared with the read-only SQLite reader. Numpy artifacts are
written without pickle, so they read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from hotswap.components.registry.model_versions import RegistryVersions
from hotswap.components.registry.reading import RegistryReads, artifact_path
from hotswap.components.registry.records import RegistryError
from mlflow.exceptions import MlflowException


class RegistryArtifacts(RegistryVersions, RegistryReads):
    """Run artifacts by path through MLflow, and numpy arrays written beside a version."""

    def run_artifact_bytes(self, run_id: str, path: str) -> bytes:
        """The bytes of one artifact of a run."""
        path = artifact_path(path)
        with tempfile.TemporaryDirectory(prefix="hotswap-download-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except MlflowException as exc:
                raise RegistryError(f"run {run_id} has no artifact {path!r}: {exc.message}") from exc
            return Path(local).read_bytes()

    def log_artifact_bytes(self, run_id: str, path: str, data: bytes) -> None:
        """Store ``data`` as the run artifact ``path`` (e.g. ``codebooks/dpq.npy``), replacing any old one."""
        parent, _, name = artifact_path(path).rpartition("/")
        self._log_files(run_id, parent or None, {name: bytes(data)})

    def log_array(self, run_id: str, path: str, array: np.ndarray) -> None:
        """A numpy array as a ``.npy`` artifact, written without pickle."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        self.log_artifact_bytes(run_id, path, buffer.getvalue())
