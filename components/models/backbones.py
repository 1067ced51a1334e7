"""Embedding networks: small conv nets with an L2-normalised embedding and a cosine head.

An upgrade normally changes the architecture, so there are two families of clearly different
capacity ("small": 2 conv blocks, "large": 3 wider conv blocks). Both end in a d-dimensional
L2-normalised embedding — the retrieval feature — and a cosine classifier (scaled dot product
of normalised features and normalised class weights). A cosine head keeps the classifier on
the same unit sphere as the features, which is what lets Dual-Tuning exchange heads between
models (old head on new features and the reverse).

Models are stored as ``model.pt`` (a plain state_dict) next to ``spec.json``; loading uses
``torch.load(weights_only=True)`` so a registry artifact can never execute code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from hotswap.components.data.preprocess import Preprocessing, builtin_preprocessing, select_view
from pydantic import BaseModel, Field, ValidationError
from torch import nn

WEIGHTS_FILE = "model.pt"
SPEC_FILE = "spec.json"


class ModelFormatError(ValueError):
    """A stored model is missing, malformed or does not match its spec."""


class BackboneSpec(BaseModel):
    """Everything needed to rebuild a model before its weights are loaded."""

    arch: str = Field(description="architecture family: 'small' or 'large'")
    embedding_dim: int = Field(64, ge=2)
    num_classes: int = Field(ge=2)
    in_channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB")
    image_size: int = Field(28, ge=8)
    classifier_scale: float = Field(16.0, gt=0, description="cosine-head logit scale s")


class CosineClassifier(nn.Module):
    """logits = s · cos(f, w_k): class weights live on the same sphere as the features."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _small_trunk(spec: BackboneSpec) -> tuple[nn.Module, int]:
    trunk = nn.Sequential(
        _conv_block(spec.in_channels, 16),
        nn.MaxPool2d(2),
        _conv_block(16, 32),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
    )
    return trunk, 32 * 4 * 4


def _large_trunk(spec: BackboneSpec) -> tuple[nn.Module, int]:
    trunk = nn.Sequential(
        _conv_block(spec.in_channels, 32),
        nn.MaxPool2d(2),
        _conv_block(32, 64),
        nn.MaxPool2d(2),
        _conv_block(64, 128),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )
    return trunk, 128 * 2 * 2


ARCHITECTURES = {"small": _small_trunk, "large": _large_trunk}


class EmbeddingModel(nn.Module):
    """Trunk → linear projection → L2-normalised embedding; cosine head on top."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        if spec.arch not in ARCHITECTURES:
            raise ModelFormatError(f"unknown architecture {spec.arch!r}; known: {sorted(ARCHITECTURES)}")
        self.spec = spec
        self.trunk, width = ARCHITECTURES[spec.arch](spec)
        self.projection = nn.Linear(width, spec.embedding_dim)
        self.head = CosineClassifier(spec.embedding_dim, spec.num_classes, spec.classifier_scale)

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def preprocessing(self) -> Preprocessing:
        """The spec's size and channels (1 = grayscale, 3 = RGB), scaled to [0, 1]."""
        return builtin_preprocessing(self.spec.image_size, self.spec.in_channels)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The retrieval feature: unit-norm, shape [B, d]. ``images`` may be a
        ``{preprocessing key: tensor}`` batch (streamed data); the model reads its own view."""
        x = select_view(images, self.preprocessing.key)
        return F.normalize(self.projection(self.trunk(x)), dim=1)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(images)
        return emb, self.head(emb)


def build_model(spec: BackboneSpec, seed: int | None = None) -> EmbeddingModel:
    """A freshly initialised model; with ``seed`` the initial weights are reproducible."""
    if seed is None:
        return EmbeddingModel(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbeddingModel(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- persistence


def model_to_bytes(model: EmbeddingModel) -> dict[str, bytes]:
    """The two files of a stored model, as bytes (for object stores and MLflow).

    Models built from the team's code (components/models/model_spec.py) store their own files:
    spec.json, weights.safetensors and, for an exported program, model.pt2."""
    if hasattr(model, "to_files"):
        return model.to_files()
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return {WEIGHTS_FILE: buffer.getvalue(), SPEC_FILE: model.spec.model_dump_json(indent=2).encode()}


def model_from_bytes(files: dict[str, bytes], source: str = "model") -> EmbeddingModel:
    """Rebuild a model from its spec and weights without unpickling anything."""
    from hotswap.components.models.model_loading import model_from_files
    from hotswap.components.models.model_spec import is_user_spec

    if SPEC_FILE in files and is_user_spec(files[SPEC_FILE]):
        return model_from_files(files, source)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if name not in files:
            raise ModelFormatError(f"{source}: missing {name}")
    try:
        spec = BackboneSpec.model_validate(json.loads(files[SPEC_FILE]))
    except (ValueError, ValidationError) as exc:
        raise ModelFormatError(f"{source}: {SPEC_FILE} is not a valid model spec ({exc})") from exc
    try:
        state = torch.load(io.BytesIO(files[WEIGHTS_FILE]), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for junk
        raise ModelFormatError(
            f"{source}: {WEIGHTS_FILE} refused by the weights-only loader (not a plain state_dict): {exc}"
        ) from exc
    if not isinstance(state, dict):
        raise ModelFormatError(f"{source}: {WEIGHTS_FILE} does not hold a state_dict")
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{source}: weights do not match spec {spec.arch!r}: {exc}") from exc
    model.eval()
    return model


def save_model(model: EmbeddingModel, directory: str | Path) -> Path:
    """Write ``model.pt`` and ``spec.json`` into ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in model_to_bytes(model).items():
        (directory / name).write_bytes(data)
    return directory


def load_model(directory: str | Path) -> EmbeddingModel:
    directory = Path(directory)
    files = {}
    for name in (SPEC_FILE, WEIGHTS_FILE):
        path = directory / name
        if path.exists():
            files[name] = path.read_bytes()
    return model_from_bytes(files, source=str(directory))


def require_same_dim(old: EmbeddingModel, new: EmbeddingModel) -> None:
    """Compatible models must embed into the same space; fail early and clearly otherwise."""
    if old.embedding_dim != new.embedding_dim:
        raise ModelFormatError(
            f"embedding dimension mismatch: old model has d={old.embedding_dim}, new model has "
            f"d={new.embedding_dim}; a compatible model must use the old model's d"
        )
