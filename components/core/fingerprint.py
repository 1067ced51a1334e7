"""When a refresh has nothing to do: the same data, the same settings and the same champion.

A scheduled refresh runs again and again. Training again on unchanged inputs reproduces (seeded)
a model that already exists, so it wastes the training, the validation and possibly a backfill.
Every training run records a *settings hash* (everything that shapes training, validation and
the decision; never locations, credentials or execution knobs) beside its dataset version. A
refresh is a no-op when

- the champion itself was trained by a refresh on this dataset version with this settings hash
  (DESIGN.md §11), or
- another version was already trained against this champion on this dataset version with this
  settings hash and carried through to its staged gallery (it would be trained again,
  identically, and judged the same way). A refresh that stopped before that is not a no-op: the
  next refresh resumes it (components/lifecycle/refresh_progress.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

TAG_SETTINGS_HASH = "hotswap.settings_hash"
TAG_DATA_VERSION = "data.version"  # as components/registry/records.py names the tag every version carries
TAG_JOB = "hotswap.job"
TAG_TRAINED_AGAINST = "hotswap.old_version"
TAG_DECISION = "backfill.decision"
TAG_STAGE = "hotswap.refresh.stage"  # components/lifecycle/refresh_progress.py
JOB_BOOTSTRAP = "bootstrap"
JOB_REFRESH = "refresh"

# Where things live and how fast they run: none of it changes what a refresh would produce.
EXCLUDED_FIELDS = frozenset(
    {
        "home",
        "tracking_uri",
        "store_uri",
        "s3_endpoint_url",
        "device",
        "torch_threads",
        "auto_promote",
        "prebuild_on_review",
        "backfill",
        "dask",  # where shards run, not what they compute
        "prefect_start_timeout_seconds",
        "prefect_idle_seconds",
        # how images are read, served, synced and waited for: none of it shapes a model
        "stream",
        "gallery",
        "serve",
        "ops",
        "service_timeout_seconds",
        "lease_ttl_seconds",
    }
)


def settings_hash(settings: Any) -> str:
    """A short sha256 over the settings that shape a model and its judgement (no secrets, no paths).

    ``settings`` is a HotswapSettings (its ``public_dict`` is used, so masked values can never
    leak into the hash input) or a plain mapping of the same shape.
    """
    data = settings.public_dict() if hasattr(settings, "public_dict") else dict(settings)
    kept = {key: value for key, value in data.items() if key not in EXCLUDED_FIELDS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def noop_reason(
    champion: Any,
    versions: Iterable[Any],
    dataset_version: str,
    settings_digest: str,
) -> str | None:
    """Why a refresh against ``champion`` would do nothing new, or None when it has work to do.

    ``champion`` and ``versions`` are registry version records (``.version`` and ``.tags``).
    """
    tags = champion.tags
    same_inputs = tags.get(TAG_DATA_VERSION) == dataset_version and (
        tags.get(TAG_SETTINGS_HASH) == settings_digest
    )
    if same_inputs and tags.get(TAG_JOB) == JOB_REFRESH:
        return (
            f"nothing changed since the champion v{champion.version} was trained: dataset version "
            f"{dataset_version}, settings hash {settings_digest}; no training, no backfill"
        )
    for info in versions:
        t = info.tags
        if (
            info.version != champion.version
            and t.get(TAG_TRAINED_AGAINST) == str(champion.version)
            and t.get(TAG_JOB) == JOB_REFRESH
            and t.get(TAG_DATA_VERSION) == dataset_version
            and t.get(TAG_SETTINGS_HASH) == settings_digest
            and TAG_DECISION in t
            and t.get(TAG_STAGE, "staged") == "staged"  # an unfinished refresh is resumed instead
        ):
            outcome = t[TAG_DECISION]
            return (
                f"v{info.version} was already trained against the champion v{champion.version} on dataset "
                f"version {dataset_version} with settings hash {settings_digest} (decision: {outcome}); "
                "training again would reproduce it"
            )
    return None
