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

The work is split by job: runs (components/registry/runs.py), versions, aliases and tags
(model_versions.py), artifacts and models (artifacts.py), compatibility reports (reports.py); the
names of tags and aliases, and :class:`ModelVersionInfo`, live in records.py.

Embedded default: ``sqlite:///<home>/mlflow.db`` with artifacts in ``<home>/mlartifacts``.
Production: an ``http(s)://`` MLflow server (PostgreSQL backend, S3 artifacts behind it).
"""

from __future__ import annotations

from typing import Any

from hotswap.components.core.settings import mask_uri_credentials
from hotswap.components.registry.reports import RegistryReports


class ModelRegistry(RegistryReports):
    """Training runs, versions, aliases, tags, reports and artifacts of one registered model."""

    @classmethod
    def from_settings(cls, settings: Any) -> ModelRegistry:
        """The registry named by ``HotswapSettings`` (SQLite under home unless a tracking URI is set)."""
        return cls(settings.resolved_tracking_uri, settings.model_name)

    def __repr__(self) -> str:
        return f"ModelRegistry({mask_uri_credentials(self.tracking_uri)!r}, {self.model_name!r})"
