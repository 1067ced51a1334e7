"""Artifacts beside a model version, and the model itself, read back without unpickling anything.

Models are not logged with ``mlflow.pytorch.log_model`` (MLflow 3 would store a pt2 graph and a
pickle fallback); they load through ``model_from_bytes``, i.e. ``torch.load(weights_only=True)``,
so an artifact carrying a pickle payload is refused, never executed. Numpy artifacts (old-class
prototypes, DPQ codebooks) are written and read with ``allow_pickle=False`` for the same reason.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from hotswap.components.core.settings import mask_uri_credentials
from hotswap.components.models.backbones import (
    SPEC_FILE,
    WEIGHTS_FILE,
    EmbeddingModel,
    model_from_bytes,
)
from hotswap.components.models.model_spec import is_user_spec, parse_spec, stored_files
from hotswap.components.registry.model_versions import RegistryVersions
from hotswap.components.registry.records import (
    CHAMPION,
    MODEL_DIR,
    ModelVersionInfo,
    RegistryError,
)
from mlflow.exceptions import MlflowException


def _artifact_path(path: str) -> str:
    """Validate a run-relative artifact path: relative, no '..', no empty parts."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"artifact path {path!r} must be a relative POSIX path")
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".", "") for part in parts):
        raise ValueError(f"artifact path {path!r} may not contain '.' or '..' parts")
    return "/".join(parts)


class RegistryArtifacts(RegistryVersions):
    """Run artifacts by path, numpy arrays beside a version, and the version's model."""

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
