"""Loading a team's model from its files (spec + safetensors [+ .pt2]) without ever unpickling.

Weights are read from safetensors (never pickle). A .pt2 archive is checked before
``torch.export.load`` sees it: any entry the archive marks as pickled is refused, and the load
itself runs with torch's weights-only unpickler forced, so loading a tampered archive never
executes code. The spec and the model classes are components/models/model_spec.py.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hotswap.components.models.backbones import ModelFormatError
from hotswap.components.models.model_spec import (
    EXPORT_FILE,
    SAFETENSORS_FILE,
    SPEC_FILE,
    AnyUserModel,
    ExportedEmbeddingModel,
    ModelSpec,
    UserEmbeddingModel,
    build_user_model,
    parse_spec,
    stored_files,
)
from torch import nn


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
