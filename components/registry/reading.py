"""What is read back from the registry, written once for both ways of reading it.

The MLflow-backed :class:`~hotswap.components.registry.mlflow_registry.ModelRegistry` and the
read-only SQLite reader (components/registry/sqlite_reader.py) differ only in how they find a
version and the bytes of a run artifact. Everything built on those two — artifacts beside a
version, numpy arrays, the model, the compatibility report — lives here, so both read the same
records the same way. This module imports neither MLflow nor torch: ``hotswap status`` and
``search`` read through it and must start in about the time of ``--help``; the model is rebuilt
(torch imported) only when :meth:`RegistryReads.load_model` is called.

Models load through ``model_from_bytes``, i.e. ``torch.load(weights_only=True)``, so an artifact
carrying a pickle payload is refused, never executed; numpy artifacts are read with
``allow_pickle=False`` for the same reason.
"""

from __future__ import annotations

import io
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from hotswap.components.core.settings import mask_uri_credentials
from hotswap.components.registry.records import (
    CHALLENGER,
    CHAMPION,
    MODEL_DIR,
    TAG_REPORT_URI,
    ModelVersionInfo,
    RegistryError,
)

if TYPE_CHECKING:
    import numpy as np
    from hotswap.components.compat.report import CompatibilityReport
    from hotswap.components.models.backbones import EmbeddingModel


def artifact_path(path: str) -> str:
    """Validate a run-relative artifact path: relative, no '..', no empty parts."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"artifact path {path!r} must be a relative POSIX path")
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".", "") for part in parts):
        raise ValueError(f"artifact path {path!r} may not contain '.' or '..' parts")
    return "/".join(parts)


def model_selector(ref: str, model_name: str) -> str:
    """The version number or alias a reference names: ``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, an alias or a number (the URI must name ``model_name``)."""
    if not ref.startswith("models:/"):
        return ref
    body = ref.removeprefix("models:/")
    name, sep, selector = body.partition("@") if "@" in body else body.rpartition("/")
    if not sep or not name or not selector:
        raise ValueError(f"model URI {ref!r} must look like models:/<name>@<alias> or models:/<name>/<n>")
    if name != model_name:
        raise ValueError(f"model URI {ref!r} names {name!r}, but this registry holds {model_name!r}")
    return selector


class RegistryReads:
    """Reads built on :meth:`resolve` and :meth:`run_artifact_bytes`, which a subclass provides."""

    model_name: str

    def resolve(self, ref: str | int | ModelVersionInfo = CHAMPION) -> ModelVersionInfo:
        raise NotImplementedError

    def run_artifact_bytes(self, run_id: str, path: str) -> bytes:
        raise NotImplementedError

    def load_artifact_bytes(self, version: str | int | ModelVersionInfo, path: str) -> bytes:
        """An artifact stored beside a model version (in the run that trained it)."""
        return self.run_artifact_bytes(self.resolve(version).run_id, path)

    def load_array(self, version: str | int | ModelVersionInfo, path: str) -> np.ndarray:
        """A ``.npy`` artifact beside a model version; object (pickled) arrays are refused."""
        import numpy as np  # here, not at the top: `status` reads the registry without numpy

        data = self.load_artifact_bytes(version, path)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise RegistryError(f"artifact {path!r} is not a plain numpy array: {exc}") from exc

    def load_model(self, ref: str | int | ModelVersionInfo = CHAMPION) -> EmbeddingModel:
        """The model of a version or alias, rebuilt from spec + weights (weights_only; never unpickled).

        Raises ModelFormatError when the stored weights are not a plain state_dict.
        """
        from hotswap.components.models.backbones import SPEC_FILE, WEIGHTS_FILE, model_from_bytes
        from hotswap.components.models.model_spec import is_user_spec, parse_spec, stored_files

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

    def load_report_uri(self, uri: str) -> CompatibilityReport:
        """Read a report back from a ``runs:/<run_id>/<path>`` URI: no recomputation."""
        from hotswap.components.compat.report import CompatibilityReport

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
