"""What hotswap writes into MLflow: alias and tag names, the version record, and secret masking.

Everything that reads or writes the registry (components/registry/, the gallery's live state,
tasks, flows) names aliases and tags through these constants, so the record stays one vocabulary.
Secret-looking keys and credentials inside URIs are masked before any value reaches MLflow.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotswap.components.core.settings import mask_uri_credentials

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


def _tag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def process_gone(pid: str | None) -> bool:
    """Whether the process that owned a run (its ``hotswap.pid`` tag, this host) no longer exists."""
    try:
        os.kill(int(pid or ""), 0)
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:
        return False
    return False
