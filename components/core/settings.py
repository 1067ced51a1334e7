"""One validated settings object for every hotswap job.

Values come, in increasing priority, from the defaults below, a TOML file
(``hotswap.toml`` in the working directory, or the path in ``HOTSWAP_CONFIG``), and
``HOTSWAP_*`` environment variables (nested fields use ``__``, e.g.
``HOTSWAP_TRAINING__EPOCHS=4``). Secrets (S3 keys, database passwords) are not fields here:
they come from the standard AWS/MLflow environment variables or Prefect blocks, so they can
never end up in a logged settings dump.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from hotswap.components.core.configs import CompatConfig, CompatSearchConfig, DecisionConfig, DPQConfig
from hotswap.components.core.settings_sources import (
    SettingsEnvError,
    SettingsFileError,
    merge,
    read_config_file,
    read_environment,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "HotswapSettings",
    "SettingsEnvError",
    "SettingsFileError",
    "load_settings",
    "mask_uri_credentials",
]


class TrainingSettings(BaseModel):
    """Hyper-parameters of supervised and compatible training (see components/models/training.py)."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    embedding_dim: int = Field(64, ge=2)
    old_arch: str = "small"
    new_arch: str = "large"
    new_model: dict[str, Any] | None = Field(
        None,
        description="the challenger's architecture from the team's code: ModelSpec fields (arch "
        "'package.module:factory', kwargs, image_size, channels, mean, std); None = the built-in new_arch",
    )


class ThresholdSettings(BaseModel):
    """The compatibility gate (see components/compat/gate.py for how each check uses them)."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    metrics: list[Literal["map", "top1", "top5"]] = Field(default_factory=lambda: ["map", "top1"])
    new_new_tolerance: float = Field(0.01, ge=0, description="new/new may sit at most this far below old/old")
    cross_margin: float = Field(0.0, description="new->old must beat old/old by more than this")
    min_update_gain: float | None = Field(None, description="gate on update gain; None = report it only")
    served_margin: float = Field(
        0.0,
        description="as served (candidate queries vs the validation gallery composed like the live "
        "one), the candidate must reach the champion's served metric plus this",
    )


class DataSettings(BaseModel):
    """Which labelled images the lifecycle trains, validates and builds the gallery on."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    source: str = Field(
        "mnist5k",
        description="'mnist5k' (bundled), 'synthetic:<items>:<classes>', a manifest (.csv/.parquet) "
        "or an image folder with one sub-folder per class",
    )
    split_seed: int = 0
    image_size: int | None = Field(
        None,
        ge=8,
        description="input size of the built-in nets (None = the data's own size); a team's model "
        "spec carries its own",
    )
    channels: Literal["RGB", "L"] | None = Field(
        None, description="input channels of the built-in nets (None = the data's own: RGB stays RGB)"
    )
    bootstrap_classes: list[str | int] | None = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        description="label names the first model is trained on (None = all). Integers name integer "
        "labels (the bundled digits); the default applies only to data whose labels are integers, "
        "other data trains its first model on every class unless this is set",
    )
    classes: list[str | int] | None = Field(
        None,
        description="the label names the dataset currently holds (None = all its labels); a "
        "class-incremental chain grows this list per refresh, which changes the dataset version",
    )
    validation_split: Literal["train", "val", "test"] = Field(
        "val", description="split the decision (and the bootstrap self-test) estimates quality on"
    )
    gate_split: Literal["train", "val", "test"] = Field(
        "test",
        description="split the compatibility gate judges on. Must be one that model selection never "
        "saw: selection (including any search over compatibility knobs) uses 'val', so the gate "
        "uses 'test', which no training or selection reads",
    )
    gallery_split: Literal["train", "val", "test"] = "test"


class BackfillSettings(BaseModel):
    """How a decided backfill is carried out (the decision's own knobs are ``decision``)."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    shard_size: int = Field(256, ge=1, description="gallery items per shard (the unit of resume)")
    workers: int = Field(2, ge=1, description="parallel shard jobs on one machine (I/O overlaps compute)")
    compute_slots: int | None = Field(
        1, ge=1, description="shard jobs that may run the model at once (None = workers)"
    )
    batch_size: int = Field(256, ge=1)


class DaskSettings(BaseModel):
    """Where passes over gallery images run (docs/operations.md, "Scale-out on a Dask cluster").

    With an address, every backfill, the first gallery and a gallery sync run their shards as
    tasks on that cluster; this machine only orchestrates. Without one they run on this machine
    (``backfill.workers`` threads). The decision's cost sample always runs here.
    """

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    address: str | None = Field(
        None, description="Dask scheduler, e.g. tcp://scheduler:8786; None = run shards on this machine"
    )
    connect_timeout_seconds: float = Field(10.0, gt=0, description="how long to wait for the scheduler")
    retries: int = Field(
        2, ge=0, description="reruns of a shard task that failed (a lost worker's shards rerun anyway)"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if any(c.isspace() for c in value) or ":" not in value:
            raise ValueError(f"expected a scheduler address like tcp://host:8786, got {value!r}")
        return value


class ServeSettings(BaseModel):
    """The query service (components/serving/): where it listens, how it batches, how it follows."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    host: str = Field("127.0.0.1", description="address `hotswap serve` binds to")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port)")
    poll_interval_s: float = Field(5.0, gt=0, description="how often the champion alias and CURRENT are read")
    retry_failed_s: float = Field(
        60.0, ge=0, description="a pair that failed to load is retried after this long (a new target at once)"
    )
    batch_size: int = Field(32, ge=1, description="most queries one forward pass and one faiss search take")
    max_wait_ms: float = Field(2.0, ge=0, description="how long the first query of a batch waits for company")
    queue_limit: int = Field(4096, ge=1, description="queued queries beyond which new ones get 503")
    torch_threads: int = Field(1, ge=1, description="OpenMP threads of the query model's forward pass")
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads of faiss searches")
    switch_interval_ms: float | None = Field(
        None, gt=0, description="Python's thread switch interval; lower lets queries cut into a pair load"
    )
    default_k: int = Field(10, ge=1, description="results per query when the request does not say")
    max_k: int = Field(100, ge=1, description="largest k a request may ask for")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1, description="largest accepted query image")
    health_probes: int = Field(
        8, ge=1, description="gallery items a new pair must answer before it goes live"
    )
    health_k: int = Field(10, ge=1, description="k of the health check's self-queries")
    access_log: bool = Field(False, description="uvicorn's per-request access log")
    health_min_self_hit: float = Field(
        0.0, ge=0, le=1, description="share of self-queries that must find their own item in the top health_k"
    )


class OperationsSettings(BaseModel):
    """How runs show up for the people operating them (Prefect and MLflow UIs, the lifecycle lock)."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    mlflow_ui_url: str | None = Field(
        None,
        description="base URL of the MLflow UI for links in Prefect artifacts; default: the tracking "
        "URI when it is http(s), otherwise no links (a local SQLite store has no UI until `mlflow ui`)",
    )
    lock_timeout_seconds: float | None = Field(
        6 * 3600.0,
        gt=0,
        description="how long a lifecycle run waits for another one on the same gallery; None = forever",
    )


class StreamSettings(BaseModel):
    """How images are read from manifests and folders (components/data/loading.py).

    Sources held in memory (the bundled sets) are sliced from a cache; every other pass over images
    goes through a torch DataLoader with these knobs, so nothing holds the whole image set.
    """

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    workers: int = Field(2, ge=0, description="DataLoader worker processes (0 = read in the calling process)")
    batch_size: int = Field(64, ge=1, description="images per streamed batch (extraction, decision)")
    prefetch_factor: int = Field(4, ge=1, description="batches each worker reads ahead")
    cache_mb: int = Field(
        256,
        ge=0,
        description="decoded images a manifest or folder source keeps in the process for the repeated "
        "passes of one flow run (training epochs, validation, the gate, the decision); 0 = none",
    )


class GallerySettings(BaseModel):
    """The gallery's own manifest, and whether a refresh brings the live gallery in line with it."""

    model_config = ConfigDict(extra="forbid")  # a renamed or misspelt key is an error, not ignored

    manifest: str | None = Field(
        None,
        description="the gallery's manifest (item_id, uri[, label]; local paths or s3://); None = the "
        "data source's data.gallery_split",
    )
    sync_on_refresh: bool = Field(
        True,
        description="a refresh first adds the manifest's new items (embedded by the champion) and drops "
        "removed ones, as `hotswap gallery-sync` does; existing items are never re-extracted",
    )


class HotswapSettings(BaseModel):
    """Everything a hotswap job needs to know about where things live and how to run.

    ``HotswapSettings(**values)`` reads the settings file and the ``HOTSWAP_*`` variables under the
    keyword values (components/core/settings_sources.py); ``model_validate`` takes a complete dump
    as it is (a worker receives the driver's settings, not its own environment's).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

    def __init__(self, **values: Any) -> None:
        super().__init__(**merge(read_config_file(), read_environment(type(self)), values))

    home: Path = Field(default_factory=lambda: Path.home() / ".hotswap")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite under home")
    store_uri: str | None = Field(None, description="local dir or s3://bucket/prefix; default home/store")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. a MinIO or moto URL")
    model_name: str = "hotswap-embedder"
    gallery_name: str = "default"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    torch_threads: int = Field(1, ge=1, description="OpenMP threads; 1 is fastest on a busy small box")
    auto_promote: bool = Field(
        False,
        description="a refresh promotes its challenger by itself when the decision made it promotable "
        "(DESIGN.md §16: a full backfill that beats live, or a blessed option that beats live)",
    )
    prebuild_on_review: bool = Field(
        False,
        description="build the decided gallery version during the refresh even when the decision waits "
        "for a reviewer; off: the gallery is planned and built by `promote` on approval",
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    compat: CompatConfig = Field(default_factory=CompatConfig)
    compat_search: CompatSearchConfig = Field(default_factory=CompatSearchConfig)
    dpq: DPQConfig = Field(default_factory=DPQConfig)
    thresholds: ThresholdSettings = Field(default_factory=ThresholdSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    ops: OperationsSettings = Field(default_factory=OperationsSettings)
    service_timeout_seconds: float = Field(
        10.0, gt=0, description="connect/read timeout for MLflow, S3 and the Prefect API calls"
    )
    prefect_start_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="how long a command waits for the home's local Prefect API to start (a fresh "
        "database migrates first; minutes on a busy machine, see docs/operations.md)",
    )
    prefect_idle_seconds: float = Field(
        600.0, gt=0, description="the home's local Prefect API stops after this long unused"
    )
    lease_ttl_seconds: float = Field(
        60.0, gt=0, description="a gallery lease not renewed for this long is expired (holder dead)"
    )
    stream: StreamSettings = Field(default_factory=StreamSettings)
    gallery: GallerySettings = Field(default_factory=GallerySettings)

    @field_validator("model_name", "gallery_name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        if not value or not set(value) <= allowed:
            raise ValueError(f"name {value!r} may only use letters, digits, '-', '_' and '.'")
        return value

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').as_posix()}"

    @property
    def local_tracking_db(self) -> Path | None:
        """The SQLite file of a ``sqlite:///`` tracking URI (None for a server or another database)."""
        uri = self.resolved_tracking_uri
        return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None

    @property
    def registry_absent(self) -> bool:
        """No MLflow database exists yet: nothing was ever recorded, and a read must not create it
        (creating the tables takes seconds, minutes on a busy machine)."""
        db = self.local_tracking_db
        return db is not None and not db.exists()

    @property
    def resolved_store_uri(self) -> str:
        return self.store_uri or str(self.home / "store")

    @property
    def resolved_mlflow_ui_url(self) -> str | None:
        """Where people open MLflow: the ``ops.mlflow_ui_url`` setting, else an http(s) tracking URI."""
        url = self.ops.mlflow_ui_url
        if url is None and self.resolved_tracking_uri.startswith(("http://", "https://")):
            url = self.resolved_tracking_uri
        return None if url is None else mask_uri_credentials(url).rstrip("/")

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
