"""Backbones from the team's own code: an import path + JSON kwargs, safetensors weights, or a
``torch.export`` program, each with its own preprocessing.

A retrieval team already has a model. hotswap takes it as it is:

- ``arch = "package.module:factory"`` (Hydra's ``_target_`` convention) plus JSON ``kwargs``:
  ``factory(**kwargs)`` must return an ``nn.Module`` mapping a batch [B, C, H, W] to [B, F] (or to a
  feature map [B, F, h, w], which is average-pooled). An embedding head (a linear projection to d)
  follows unless ``projection=False`` (the trunk already outputs d), then L2 normalisation and a
  cosine classifier (needed by Dual-Tuning's structural terms; for an adopted model it is fitted
  on frozen features, see components/lifecycle/adopt.py).
- ``format = "export"``: the frozen old model is a ``torch.export`` program (.pt2) mapping images
  to embeddings, for teams that cannot share their code. It only ever serves as the frozen
  teacher and gallery model; its classifier lives beside it in safetensors.

The JSON spec records everything needed to rebuild the model in a fresh process: architecture,
kwargs, embedding dimension, classes, channels, input size, mean/std and format. Weights are read
from safetensors (never pickle). A .pt2 archive is checked before ``torch.export.load`` sees it:
any entry the archive marks as pickled is refused, and the load itself runs with torch's
weights-only unpickler forced, so loading a tampered archive never executes code.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from hotswap.components.data.preprocess import Channels, Preprocessing, select_view
from hotswap.components.models.backbones import CosineClassifier, ModelFormatError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from torch import nn

SPEC_FILE = "spec.json"
SAFETENSORS_FILE = "weights.safetensors"
EXPORT_FILE = "model.pt2"
Format = Literal["state_dict", "export"]


class ModelSpec(BaseModel):
    """Everything needed to rebuild a team's model exactly, before its weights are loaded."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(description="'package.module:factory' (state_dict) or a label for an export")
    kwargs: dict[str, JsonValue] = Field(default_factory=dict, description="JSON keyword args of the factory")
    format: Format = "state_dict"
    embedding_dim: int = Field(ge=2)
    num_classes: int = Field(ge=2)
    image_size: int = Field(ge=8)
    channels: Channels = "RGB"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    projection: bool = Field(True, description="add a linear head trunk features → d (False: trunk gives d)")
    trunk_dim: int | None = Field(None, description="trunk output width (measured at build when None)")
    classifier_scale: float = Field(16.0, gt=0)
    class_names: tuple[str, ...] = Field((), description="label of each classifier row (class maps by name)")

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=self.image_size, channels=self.channels, mean=self.mean, std=self.std)

    @property
    def in_channels(self) -> int:
        return self.preprocessing.in_channels


def import_target(target: str) -> Any:
    """Resolve ``"package.module:attr.path"`` to the object it names (clear error otherwise)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ModelFormatError(f"arch {target!r}: expected 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelFormatError(f"arch {target!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelFormatError(f"arch {target!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelFormatError(f"arch {target!r}: {attr!r} is not callable")
    return obj


class _Pool(nn.Module):
    """Feature maps [B, F, h, w] → [B, F]; flat features pass through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x.flatten(1)


class UserEmbeddingModel(nn.Module):
    """The team's trunk → (projection to d) → L2-normalised embedding; cosine head on top.

    Same interface as the built-in EmbeddingModel (``embed``, ``classify``, ``head``, ``spec``), so
    training, Dual-Tuning, DPQ and the backfill take it unchanged. ``embed`` accepts a tensor or a
    ``{preprocessing key: tensor}`` batch and reads its own view.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.format != "state_dict":
            raise ModelFormatError(f"spec format {spec.format!r}: build it with load_export_model")
        factory = import_target(spec.arch)
        try:
            trunk = factory(**spec.kwargs)
        except TypeError as exc:
            raise ModelFormatError(
                f"arch {spec.arch!r}: factory rejected kwargs {spec.kwargs} ({exc})"
            ) from exc
        if not isinstance(trunk, nn.Module):
            raise ModelFormatError(
                f"arch {spec.arch!r}: factory returned {type(trunk).__name__}, not nn.Module"
            )
        self.trunk = nn.Sequential(trunk, _Pool())
        width = spec.trunk_dim or self._measure_width(spec)
        self.spec = spec.model_copy(update={"trunk_dim": width})
        if spec.projection:
            self.projection: nn.Module = nn.Linear(width, spec.embedding_dim)
        elif width != spec.embedding_dim:
            raise ModelFormatError(
                f"arch {spec.arch!r}: trunk outputs {width} features, "
                f"but projection=False needs d={spec.embedding_dim}"
            )
        else:
            self.projection = nn.Identity()
        self.head = CosineClassifier(spec.embedding_dim, spec.num_classes, spec.classifier_scale)

    def _measure_width(self, spec: ModelSpec) -> int:
        was = self.trunk.training
        self.trunk.eval()
        with torch.no_grad():
            probe = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
            try:
                out = self.trunk(probe)
            except Exception as exc:
                raise ModelFormatError(
                    f"arch {spec.arch!r}: forward pass on [2, {spec.in_channels}, {spec.image_size}, "
                    f"{spec.image_size}] failed ({exc})"
                ) from exc
        self.trunk.train(was)
        return int(out.shape[1])

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def embed(self, images: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = select_view(images, self.preprocessing.key)
        return F.normalize(self.projection(self.trunk(x)), dim=1)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings)

    def forward(self, images: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(images)
        return emb, self.head(emb)

    def to_files(self) -> dict[str, bytes]:
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return {SPEC_FILE: self.spec.model_dump_json(indent=2).encode(), SAFETENSORS_FILE: save(state)}


class ExportedEmbeddingModel(nn.Module):
    """A ``torch.export`` program (images → embedding) with a cosine head: a frozen teacher.

    Its parameters are the program's own; it is never trained (``train()`` keeps eval mode).
    """

    def __init__(self, spec: ModelSpec, program: Any, export_bytes: bytes) -> None:
        super().__init__()
        self.spec = spec
        self.program = program.module()
        self._export_bytes = export_bytes
        self.head = CosineClassifier(spec.embedding_dim, spec.num_classes, spec.classifier_scale)

    def train(self, mode: bool = True) -> ExportedEmbeddingModel:  # an export has no train mode
        self.training = False
        self.head.train(mode)
        return self

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def embed(self, images: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = select_view(images, self.preprocessing.key)
        out = self.program(x)
        if isinstance(out, tuple | list):
            out = out[0]
        if out.ndim != 2 or out.shape[1] != self.spec.embedding_dim:
            raise ModelFormatError(
                f"exported model {self.spec.arch!r} returned shape {tuple(out.shape)}, "
                f"expected [B, {self.spec.embedding_dim}]"
            )
        return F.normalize(out, dim=1)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings)

    def forward(self, images: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(images)
        return emb, self.head(emb)

    def to_files(self) -> dict[str, bytes]:
        from safetensors.torch import save

        head = {"head.weight": self.head.weight.detach().cpu().contiguous()}
        return {
            SPEC_FILE: self.spec.model_dump_json(indent=2).encode(),
            SAFETENSORS_FILE: save(head),
            EXPORT_FILE: self._export_bytes,
        }


AnyUserModel = UserEmbeddingModel | ExportedEmbeddingModel


# --------------------------------------------------------------------------- safe loading


def parse_spec(data: bytes | str | Mapping[str, Any], source: str = "spec") -> ModelSpec:
    try:
        raw = json.loads(data) if isinstance(data, bytes | str) else dict(data)
        return ModelSpec.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise ModelFormatError(f"{source}: not a valid model spec ({exc})") from exc


def is_user_spec(data: bytes) -> bool:
    """Specs written by this module carry ``format``; the built-in nets' specs do not."""
    try:
        return "format" in json.loads(data)
    except ValueError:
        return False


def stored_files(spec: ModelSpec) -> tuple[str, ...]:
    return (
        (SPEC_FILE, SAFETENSORS_FILE, EXPORT_FILE)
        if spec.format == "export"
        else (SPEC_FILE, SAFETENSORS_FILE)
    )


def load_safetensors(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes: a header and raw buffers, nothing to execute."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(bytes(data))
    except (SafetensorError, ValueError, OSError) as exc:
        raise ModelFormatError(f"{source}: not a valid safetensors file ({exc})") from exc


_EXPORT_LOCK = threading.Lock()


def check_export_archive(data: bytes, source: str) -> None:
    """Refuse a .pt2 archive that holds anything torch.export.load would unpickle.

    torch.export.load unpickles (weights_only=False) every weight or constant whose config says
    ``use_pickle`` and every custom-object constant; a plain export of an nn.Module has none.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ModelFormatError(f"{source}: not a torch.export archive ({exc})") from exc
    names = archive.namelist()
    if not any(n.endswith("models/model.json") for n in names):
        raise ModelFormatError(f"{source}: not a torch.export archive (no models/model.json)")
    for name in names:
        if name.endswith("_config.json") and ("/data/weights/" in name or "/data/constants/" in name):
            try:
                config = json.loads(archive.read(name)).get("config", {})
            except ValueError as exc:
                raise ModelFormatError(f"{source}: {name} is not JSON ({exc})") from exc
            for entry, meta in config.items():
                if not isinstance(meta, dict) or meta.get("use_pickle", True) or "tensor_meta" not in meta:
                    raise ModelFormatError(
                        f"{source}: entry {entry!r} of {name} is stored as a pickle; refused "
                        "(export the model with plain tensor weights)"
                    )
        elif "/data/constants/" in name and not name.rsplit("/", 1)[-1].startswith("tensor_"):
            raise ModelFormatError(f"{source}: archive holds a pickled object {name!r}; refused")


def load_export_program(data: bytes, source: str = "model.pt2") -> Any:
    """``torch.export.load`` on a checked archive, with the weights-only unpickler forced."""
    check_export_archive(data, source)
    with _EXPORT_LOCK:
        saved = {
            k: os.environ.get(k)
            for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        }
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        try:
            return torch.export.load(io.BytesIO(data))
        except Exception as exc:
            raise ModelFormatError(f"{source}: torch.export.load refused the archive ({exc})") from exc
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def build_user_model(spec: ModelSpec, seed: int | None = None) -> UserEmbeddingModel:
    """A freshly initialised model of the team's architecture (reproducible with ``seed``)."""
    if seed is None:
        return UserEmbeddingModel(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UserEmbeddingModel(spec)


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict, with a one-line error naming the first mismatching tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {items[:3]}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape (stored vs spec)", shapes),
            )
            if items
        ]
        raise ModelFormatError(f"{source}: weights do not fit the spec ({'; '.join(parts)})")
    model.load_state_dict(dict(state), strict=True)


def model_from_files(files: Mapping[str, bytes], source: str = "model") -> AnyUserModel:
    """Rebuild a stored user model (spec + safetensors [+ .pt2]) in eval mode, never unpickling."""
    if SPEC_FILE not in files:
        raise ModelFormatError(f"{source}: missing {SPEC_FILE}")
    spec = parse_spec(files[SPEC_FILE], f"{source}/{SPEC_FILE}")
    for name in stored_files(spec):
        if name not in files:
            raise ModelFormatError(f"{source}: missing {name}")
    state = load_safetensors(files[SAFETENSORS_FILE], f"{source}/{SAFETENSORS_FILE}")
    if spec.format == "export":
        program = load_export_program(files[EXPORT_FILE], f"{source}/{EXPORT_FILE}")
        model: AnyUserModel = ExportedEmbeddingModel(spec, program, bytes(files[EXPORT_FILE]))
        _load_state(model.head, {"weight": state.get("head.weight", torch.empty(0))}, source)
    else:
        model = UserEmbeddingModel(spec)
        _load_state(model, state, source)
    model.eval()
    return model


def load_team_model(
    spec: ModelSpec, weights: str | Path, head: torch.Tensor | None = None, source: str | None = None
) -> AnyUserModel:
    """The team's model from their own files: a safetensors state_dict of the trunk (keys as their
    module names them, or already prefixed ``trunk.``/``projection.``) or a .pt2 program.

    Parts the team does not have (the projection when ``projection=True``, the classifier) keep
    their seeded initial values until adopt fits the classifier.
    """
    path = Path(weights)
    source = source or str(path)
    if not path.is_file():
        raise ModelFormatError(f"{source}: weights file does not exist")
    data = path.read_bytes()
    if spec.format == "export":
        program = load_export_program(data, source)
        model: AnyUserModel = ExportedEmbeddingModel(spec, program, data)
    else:
        model = build_user_model(spec, seed=0)
        state = load_safetensors(data, source)
        own = model.state_dict()
        if not any(k.startswith(("trunk.", "projection.", "head.")) for k in state):
            state = {f"trunk.0.{k}": v for k, v in state.items()}
        missing_trunk = [k for k in own if k.startswith("trunk.") and k not in state]
        if missing_trunk:
            raise ModelFormatError(
                f"{source}: weights do not fit arch {spec.arch!r} with kwargs {spec.kwargs}: "
                f"no weights for {missing_trunk[:3]}"
            )
        _load_state(model, {**own, **state}, f"{source} (arch {spec.arch!r}, kwargs {spec.kwargs})")
    if head is not None:
        with torch.no_grad():
            model.head.weight.copy_(head)
    model.eval()
    return model
