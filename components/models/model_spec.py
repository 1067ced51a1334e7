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
kwargs, embedding dimension, classes, channels, input size, mean/std and format. This module is
the spec and the models built from it; reading stored weights without unpickling is
components/models/model_loading.py.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
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

# --------------------------------------------------------------------------- stored specs


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


def build_user_model(spec: ModelSpec, seed: int | None = None) -> UserEmbeddingModel:
    """A freshly initialised model of the team's architecture (reproducible with ``seed``)."""
    if seed is None:
        return UserEmbeddingModel(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UserEmbeddingModel(spec)
