"""Adopting a running system: the team's model becomes v1 and its gallery features the first version.

What ``hotswap adopt`` takes over, and how (tasks/adopt.py wires these steps; nothing here needs
Prefect or a server):

1. The model: :class:`~components.model_spec.ModelSpec` (import path + kwargs, or a .pt2 export)
   and a weights file (safetensors, or the .pt2 itself), with its own preprocessing.
2. Its gallery features, exactly as the deployed system has them: parquet (``item_id`` + a list
   column ``feature``/``embedding`` or numeric columns ``f0..f{d-1}``; ``label`` optional) or an
   .npy matrix with the ids beside it (.npy, .txt one id a line, or a .csv/.parquet with
   ``item_id`` [+ ``label``]). They are checked (shape, d, finite, unique ids) and unit-normalised
   (hotswap's models emit unit-norm features; a gallery at another scale would rank wrongly against
   them). Nothing is re-extracted.
3. The old classifier (:func:`fit_cosine_head`): Dual-Tuning's N2O
   term and the backfill's uncertainty ordering need W_o, which a deployed embedder rarely has. It
   is fitted on the frozen old features of the labelled training rows.
4. DPQ codebooks trained on the imported gallery features (label term through the fitted head when
   the gallery is labelled), then the first gallery version: shards, codes, index, CURRENT.
5. An :class:`AdoptReport` of all of the above.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hotswap.components.compat.target_constants import CompatibilityError
from hotswap.components.data.images import DataError
from pydantic import BaseModel, Field

FEATURE_COLUMNS = ("feature", "features", "embedding")


class GalleryFeatures(BaseModel):
    """Imported gallery features (arrays kept out of the pydantic schema)."""

    model_config = {"arbitrary_types_allowed": True}

    ids: Any
    features: Any
    labels: Any | None = None
    source: str
    renormalised: float = Field(0.0, description="largest |‖f‖ − 1| before unit-normalising")


def _read_ids(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"gallery ids {path}: file does not exist")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(str), None
    if path.suffix == ".txt":
        return np.array([line.strip() for line in path.read_text().splitlines() if line.strip()]), None
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    if "item_id" not in frame.columns:
        raise DataError(f"gallery ids {path}: no item_id column")
    labels = frame["label"].astype(str).to_numpy() if "label" in frame.columns else None
    return frame["item_id"].astype(str).to_numpy(), labels


def read_gallery_features(
    path: str | Path, ids_path: str | Path | None = None, embedding_dim: int | None = None
) -> GalleryFeatures:
    """Gallery features from parquet, or from .npy with an ids file; validated and unit-normalised."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"gallery features {path}: file does not exist")
    labels = None
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            if "item_id" not in frame.columns:
                raise DataError(f"gallery features {path}: no item_id column")
            ids = frame["item_id"].astype(str).to_numpy()
            column = next((c for c in FEATURE_COLUMNS if c in frame.columns), None)
            if column is not None:
                features = np.stack(frame[column].to_numpy()).astype(np.float32)
            else:
                numeric = [
                    c for c in frame.columns if isinstance(c, str) and c[:1] == "f" and c[1:].isdigit()
                ]
                if not numeric:
                    raise DataError(
                        f"gallery features {path}: needs a list column {list(FEATURE_COLUMNS)} "
                        "or columns f0..f<d-1>"
                    )
                features = frame[sorted(numeric, key=lambda c: int(c[1:]))].to_numpy(dtype=np.float32)
            if "label" in frame.columns:
                labels = frame["label"].astype(str).to_numpy()
        elif path.suffix == ".npy":
            if ids_path is None:
                raise DataError(f"gallery features {path}: an .npy matrix needs an ids file (--gallery-ids)")
            features = np.load(path, allow_pickle=False).astype(np.float32)
            ids, labels = _read_ids(Path(ids_path))
        else:
            raise DataError(
                f"gallery features {path}: unsupported format {path.suffix!r}; use .parquet or .npy"
            )
    except DataError:
        raise
    except Exception as exc:  # pyarrow / numpy raise many types for a damaged file
        raise DataError(f"gallery features {path}: cannot be read ({exc})") from exc
    where = f"gallery features {path}"
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise DataError(f"{where}: {len(ids)} ids for a feature matrix of shape {features.shape}")
    if not len(ids):
        raise DataError(f"{where}: no rows")
    if embedding_dim is not None and features.shape[1] != embedding_dim:
        raise DataError(
            f"{where}: features have d={features.shape[1]}, the model embeds into d={embedding_dim}"
        )
    if not np.isfinite(features).all():
        bad = ids[~np.isfinite(features).all(axis=1)][:5].tolist()
        raise DataError(f"{where}: non-finite features for item(s) {bad}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{where}: duplicate item id(s) {uniq[counts > 1][:5].tolist()}")
    norms = np.linalg.norm(features, axis=1)
    if (norms == 0).any():
        raise DataError(f"{where}: zero feature vector for item(s) {ids[norms == 0][:5].tolist()}")
    deviation = float(np.abs(norms - 1).max())
    if labels is not None and (pd.isna(labels) | (labels == "")).all():
        labels = None
    return GalleryFeatures(
        ids=ids, features=features / norms[:, None], labels=labels, source=str(path), renormalised=deviation
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AdoptReport(BaseModel):
    """What adopt took over; logged to MLflow beside v1 (``adopt/report.json`` and ``.md``)."""

    model_name: str
    model_version: str
    spec: dict[str, Any]
    weights: str
    weights_sha256: str
    dataset_version: str
    train_items: int
    classes: int
    classifier_train_accuracy: float = Field(description="fitted old head on frozen train features")
    self_test: dict[str, float] = Field(default_factory=dict, description="old/old on the validation split")
    gallery: str
    gallery_source: str
    gallery_items: int
    gallery_labelled: bool
    gallery_renormalised: float
    gallery_version: str
    codebook_bits: int
    seconds: dict[str, float] = Field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [
            f"# Adopted `{self.spec.get('arch')}` as {self.model_name} v{self.model_version}",
            "",
            f"- weights: `{Path(self.weights).name}` (sha256 {self.weights_sha256[:16]}…), format "
            f"{self.spec.get('format')}, input {self.spec.get('channels')} {self.spec.get('image_size')}², "
            f"d = {self.spec.get('embedding_dim')}",
            f"- training data {self.dataset_version}: {self.train_items} labelled items, "
            f"{self.classes} classes; "
            f"old classifier fitted on frozen features, train accuracy {self.classifier_train_accuracy:.3f}",
            "- self-test (validation, old/old): "
            + (", ".join(f"{k} {v:.4f}" for k, v in self.self_test.items()) or "none"),
            f"- gallery `{self.gallery}` ← `{Path(self.gallery_source).name}`: {self.gallery_items} items "
            f"({'labelled' if self.gallery_labelled else 'unlabelled'}; largest norm deviation "
            f"{self.gallery_renormalised:.3g} before unit-normalising), re-extracted: none",
            f"- first live gallery version `{self.gallery_version}` with {self.codebook_bits}-bit DPQ codes",
        ]
        if self.seconds:
            lines.append("- seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return "\n".join(lines) + "\n"


def prototypes_from_features(
    features: np.ndarray, labels: np.ndarray, num_classes: int, where: str
) -> torch.Tensor:
    """Per-class means of (frozen old) features; every class must have a row."""
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise CompatibilityError(
            f"{where}: no training items for class(es) {missing}; cannot build prototypes"
        )
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    return torch.from_numpy((sums / counts).astype(np.float32))


def fit_cosine_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    scale: float = 16.0,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """The old classifier W_o for an adopted model: rows on the unit sphere, fitted by label-smoothed
    CE of ``scale·cos(f, w_k)`` on frozen features, starting from the normalised class means."""
    if len(features) != len(labels) or not len(labels):
        raise DataError(f"fit_cosine_head: {len(features)} features for {len(labels)} labels")
    feats = F.normalize(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), dim=1)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    init = prototypes_from_features(feats.numpy(), y.numpy(), num_classes, "old classifier")
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(F.normalize(init, dim=1).clone())
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        logits = scale * feats @ F.normalize(weight, dim=1).T
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return F.normalize(weight.detach(), dim=1)
