"""One validated settings object for every hotswap job.

Values come, in increasing priority, from the defaults below, a TOML file
(``hotswap.toml`` in the working directory, or the path in ``HOTSWAP_CONFIG``), and
``HOTSWAP_*`` environment variables (nested fields use ``__``, e.g.
``HOTSWAP_TRAINING__EPOCHS=4``). Secrets (S3 keys, database passwords) are not fields here:
they come from the standard AWS/MLflow environment variables or Prefect blocks, so they can
never end up in a logged settings dump.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from components.compatibility import DEFAULT_CONFIG, CompatConfig
from components.decision import DecisionConfig
from components.quantization import DPQConfig


class TrainingSettings(BaseModel):
    """Hyper-parameters of supervised and compatible training (see components/training.py)."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    embedding_dim: int = Field(64, ge=2)
    old_arch: str = "small"
    new_arch: str = "large"


class ThresholdSettings(BaseModel):
    """The compatibility gate (see components/report.py for how each check uses them)."""

    metrics: list[Literal["map", "top1", "top5"]] = Field(default_factory=lambda: ["map", "top1"])
    new_new_tolerance: float = Field(0.01, ge=0, description="new/new may sit at most this far below old/old")
    cross_margin: float = Field(0.0, description="new->old must beat old/old by more than this")
    min_update_gain: float | None = Field(None, description="gate on update gain; None = report it only")


class DataSettings(BaseModel):
    """Which labelled images the lifecycle trains, validates and builds the gallery on."""

    source: str = Field(
        "mnist5k",
        description="'mnist5k' (bundled), 'synthetic:<items>:<classes>', a manifest (.csv/.parquet) "
        "or an image folder with one sub-folder per class",
    )
    split_seed: int = 0
    image_size: int = Field(28, ge=8)
    bootstrap_classes: list[int] | None = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], description="classes the first model is trained on"
    )
    validation_split: Literal["train", "val", "test"] = "val"
    gallery_split: Literal["train", "val", "test"] = "test"


class BackfillSettings(BaseModel):
    """How a decided backfill is carried out (the decision's own knobs are ``decision``)."""

    shard_size: int = Field(256, ge=1, description="gallery items per shard (the unit of resume)")
    workers: int = Field(2, ge=1, description="parallel shard jobs on one machine (I/O overlaps compute)")
    compute_slots: int | None = Field(
        1, ge=1, description="shard jobs that may run the model at once (None = workers)"
    )
    batch_size: int = Field(256, ge=1)


class StreamSettings(BaseModel):
    """Data read lazily from a manifest (local paths or s3:// objects), for a team's own data.

    With ``enabled`` the lifecycle never holds the image set: ``data.source`` must be a manifest
    (item_id, uri, label, split), the gallery is ``gallery_manifest`` (item_id, uri; labels
    optional), and every pass over images goes through a torch DataLoader (components/streaming.py).
    """

    enabled: bool = Field(False, description="stream data.source through a DataLoader instead of decoding it")
    gallery_manifest: str | None = Field(
        None, description="the gallery's own manifest (item_id, uri[, label])"
    )
    workers: int = Field(2, ge=0, description="DataLoader worker processes (0 = read in the calling process)")
    batch_size: int = Field(64, ge=1, description="images per streamed batch (extraction, decision)")
    prefetch_factor: int = Field(4, ge=1, description="batches each worker reads ahead")
    new_model: dict[str, Any] | None = Field(
        None,
        description="the challenger's architecture from the team's code: ModelSpec fields (arch "
        "'package.module:factory', kwargs, image_size, channels, mean, std); None = training.new_arch",
    )


def _config_file() -> Path:
    return Path(os.environ.get("HOTSWAP_CONFIG", "hotswap.toml"))


class HotswapSettings(BaseSettings):
    """Everything a hotswap job needs to know about where things live and how to run."""

    model_config = SettingsConfigDict(
        env_prefix="HOTSWAP_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".hotswap")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite under home")
    store_uri: str | None = Field(None, description="local dir or s3://bucket/prefix; default home/store")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. a MinIO or moto URL")
    model_name: str = "hotswap-embedder"
    gallery_name: str = "default"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    torch_threads: int = Field(1, ge=1, description="OpenMP threads; 1 is fastest on a busy small box")
    auto_promote: bool = Field(False, description="scheduled refresh promotes a blessed model by itself")
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    compat: CompatConfig = Field(default_factory=lambda: DEFAULT_CONFIG)
    dpq: DPQConfig = Field(default_factory=DPQConfig)
    thresholds: ThresholdSettings = Field(default_factory=ThresholdSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)

    @field_validator("model_name", "gallery_name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        if not value or not set(value) <= allowed:
            raise ValueError(f"name {value!r} may only use letters, digits, '-', '_' and '.'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').as_posix()}"

    @property
    def resolved_store_uri(self) -> str:
        return self.store_uri or str(self.home / "store")

    @property
    def torch_device(self) -> str:
        """The concrete torch device: 'auto' picks a GPU when one is present."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to log: credentials embedded in URIs are masked."""
        data = self.model_dump(mode="json")
        for key in ("tracking_uri", "store_uri", "s3_endpoint_url"):
            if data.get(key):
                data[key] = mask_uri_credentials(data[key])
        return data


def mask_uri_credentials(uri: str) -> str:
    """Replace ``user:password@`` in a URI by ``***@`` so it can be logged."""
    if "://" not in uri or "@" not in uri.split("://", 1)[1].split("/", 1)[0]:
        return uri
    scheme, rest = uri.split("://", 1)
    netloc, _, path = rest.partition("/")
    host = netloc.rsplit("@", 1)[1]
    return f"{scheme}://***@{host}" + (f"/{path}" if path else "")


def load_settings(**overrides: Any) -> HotswapSettings:
    """Read settings from file and environment, with keyword overrides on top."""
    return HotswapSettings(**overrides)
