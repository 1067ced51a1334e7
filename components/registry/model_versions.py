"""Registered model versions, their aliases (champion, challenger, previous) and their tags.

Promotion is only alias moves: ``previous`` is moved before ``champion`` so a crash in between
leaves both on the old champion rather than losing it, and :meth:`restore_aliases` puts a snapshot
back for a rollback. Only finished hotswap training runs can be registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotswap.components.core.faults import fault_point
from hotswap.components.registry.reading import model_selector
from hotswap.components.registry.records import (
    CHALLENGER,
    CHAMPION,
    MANAGED_ALIASES,
    MODEL_DIR,
    PREVIOUS,
    TAG_DATA_VERSION,
    TAG_KIND,
    ModelVersionInfo,
    RegistryError,
    VersionNotFoundError,
    _tag_value,
    mask_secret,
)
from hotswap.components.registry.runs import RegistryRuns
from mlflow.exceptions import MlflowException


class RegistryVersions(RegistryRuns):
    """Register, resolve and list versions; move aliases; tag versions."""

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
        text = model_selector(str(ref), self.model_name)
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

    def set_tags(self, version: str | int | ModelVersionInfo, tags: Mapping[str, Any]) -> None:
        """Set model-version tags (bools become 'true'/'false', dicts and lists JSON)."""
        info = self.resolve(version)
        for key, value in tags.items():
            self.client.set_model_version_tag(
                self.model_name, info.version, key, mask_secret(key, _tag_value(value))
            )

    def get_tags(self, version: str | int | ModelVersionInfo) -> dict[str, str]:
        return self.resolve(version).tags
