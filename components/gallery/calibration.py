"""Score calibrations stored inside a gallery version, one per query model.

A calibration (components/compat/calibration.py) is for queries of one model against the segments of
one gallery version, so it lives with the version and is keyed by the query model version::

    galleries/<gallery>/versions/<vid>/calibration/<query model version>.json

Each file holds the calibration and the sha256 of its canonical JSON, checked on every read (a
corrupted or edited file is refused, never silently served).

Why a sidecar per query model rather than a manifest field: the query model changes without the
gallery changing. After a *skip* onto an already-mixed version (say v1 + v2 features, v2
queries), the next champion v3 searches the very same sealed version, and v3's scores against
the v1 and v2 segments need their own maps. Rewriting the version is out of the question (it is
immutable, and copying it would cost what skip saves), so a calibration for a new query model
is *added* beside the others. Adding one never changes what any other query model is served,
and an existing file is never replaced once the version is sealed (write-once per key), so a
version stays reproducible for every model that has searched it — a rollback to the previous
champion finds its own calibration still there. The manifest, shards and index are untouched,
so versions written before calibrations existed read exactly as before: a single-model version
needs none (the identity), a mixed one without a calibration for the query model is reported by
:func:`calibration_for` (or served raw where the caller allows it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.compat.calibration_fitting import fit_calibration
from hotswap.components.core.configs import CalibrationConfig
from hotswap.components.gallery.keys import validate_name
from hotswap.components.gallery.records import (
    GalleryError,
    ShardCorruptedError,
    VersionImmutableError,
    first_error,
    sha256_hex,
    to_json,
)
from hotswap.components.gallery.store import ObjectNotFoundError
from hotswap.components.gallery.versions import GalleryStore
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

if TYPE_CHECKING:  # searching reads calibrations without torch; only fitting one embeds images
    from hotswap.components.data.images import ImageSet
    from hotswap.components.models.backbones import EmbeddingModel
    from hotswap.components.quant.dpq import DPQCodebooks

CALIBRATION_DIR = "calibration/"


class CalibrationMissingError(GalleryError):
    """A mixed gallery version has no calibration for the model about to query it."""


class StoredCalibration(BaseModel):
    """The sidecar: a calibration and the sha256 of its canonical JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    calibration: ScoreCalibration


def calibration_file(query_model: str) -> str:
    """Path of a query model's calibration, relative to the version folder."""
    return f"{CALIBRATION_DIR}{validate_name(str(query_model), 'query model version')}.json"


def _canonical(calibration: ScoreCalibration) -> bytes:
    return json.dumps(calibration.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def _key(galleries: GalleryStore, gallery: str, version: str, query_model: str) -> str:
    return galleries.version_key(gallery, version, calibration_file(query_model))


def version_models(galleries: GalleryStore, gallery: str, version: str) -> list[str]:
    """The model versions whose feature spaces a version's rows are in (sorted, each at least one
    row; a mapped row counts as the version it was mapped into)."""
    from hotswap.components.gallery.provenance import (
        feature_spaces,  # backfill writes calibrations: import lazily
    )

    return sorted(set(feature_spaces(galleries, gallery, version).tolist()))


def write_calibration(
    galleries: GalleryStore,
    gallery: str,
    version: str,
    calibration: ScoreCalibration,
    models: Sequence[str] | None = None,
) -> str:
    """Store ``calibration`` in a finalized version (sealed or not); returns its key.

    It must cover every model the version holds (``models``, default read from the version's
    provenance). Writing the same calibration again is a no-op; replacing a different one is
    allowed only while the version is unpublished (a resumed build), never once it is sealed.
    """
    galleries.load_manifest(gallery, version)  # the version exists and is finalized
    present = list(models) if models is not None else version_models(galleries, gallery, version)
    missing = sorted(set(present) - set(calibration.models))
    if missing:
        raise GalleryError(
            f"gallery {gallery!r} version {version!r} holds features of models {sorted(present)}; the "
            f"calibration for queries of model {calibration.query_model!r} has no map for {missing}"
        )
    key = _key(galleries, gallery, version, calibration.query_model)
    record = StoredCalibration(sha256=sha256_hex(_canonical(calibration)), calibration=calibration)
    data = to_json(record)
    existing = _read(galleries, gallery, version, calibration.query_model)
    if existing is not None:
        if existing.sha256 == record.sha256:
            return key
        if galleries.is_sealed(gallery, version):
            raise VersionImmutableError(
                f"gallery {gallery!r} version {version!r} is published and already has a different "
                f"calibration for queries of model {calibration.query_model!r}; it is never replaced"
            )
    galleries.store.put_bytes(key, data)
    return key


def _read(galleries: GalleryStore, gallery: str, version: str, query_model: str) -> StoredCalibration | None:
    key = _key(galleries, gallery, version, query_model)
    where = f"gallery {gallery!r} version {version!r}: calibration {calibration_file(query_model)}"
    try:
        data = galleries.store.get_bytes(key)
    except ObjectNotFoundError:
        return None
    try:
        record = StoredCalibration.model_validate_json(data)
    except ValidationError as exc:
        raise ShardCorruptedError(f"{where} is unreadable: {first_error(exc)}") from None
    if sha256_hex(_canonical(record.calibration)) != record.sha256:
        raise ShardCorruptedError(f"{where} fails its checksum")
    if record.calibration.query_model != str(query_model):
        raise ShardCorruptedError(
            f"{where} is for queries of model {record.calibration.query_model!r}, not {query_model!r}"
        )
    return record


def load_calibration(
    galleries: GalleryStore, gallery: str, version: str, query_model: str
) -> ScoreCalibration | None:
    """The stored calibration for ``query_model``'s queries, checksum-verified; None if absent."""
    record = _read(galleries, gallery, version, query_model)
    return record.calibration if record is not None else None


def list_calibrations(galleries: GalleryStore, gallery: str, version: str) -> list[str]:
    """Query model versions that have a calibration in this version, sorted."""
    prefix = galleries.version_key(gallery, version, CALIBRATION_DIR)
    return sorted(
        key[len(prefix) : -len(".json")] for key in galleries.store.list(prefix) if key.endswith(".json")
    )


def calibration_for(
    galleries: GalleryStore,
    gallery: str,
    version: str,
    query_model: str,
    *,
    require: bool = True,
    models: Sequence[str] | None = None,
) -> tuple[ScoreCalibration, str]:
    """The calibration to serve ``query_model`` on this version, and how it was obtained.

    A single-model version gets the identity ("single-model"); a mixed one its stored calibration
    ("stored"). A mixed one without a calibration for this query model raises
    :class:`CalibrationMissingError` with ``require``, else gets the identity ("missing": raw
    scores, as before calibrations existed).
    """
    present = list(models) if models is not None else version_models(galleries, gallery, version)
    if len(present) <= 1:
        return ScoreCalibration.identity(str(query_model), present or [str(query_model)]), "single-model"
    stored = load_calibration(galleries, gallery, version, query_model)
    if stored is not None:
        if not stored.covers(present):
            raise ShardCorruptedError(
                f"gallery {gallery!r} version {version!r}: the calibration for model {query_model!r} "
                f"covers {list(stored.models)}, the version holds {present}"
            )
        return stored, "stored"
    if require:
        raise CalibrationMissingError(
            f"gallery {gallery!r} version {version!r} mixes features of models {present} but has no score "
            f"calibration for queries of model {query_model!r} "
            f"(has: {list_calibrations(galleries, gallery, version)}); "
            "fit one with ensure_calibration before serving it"
        )
    return ScoreCalibration.identity(str(query_model), present), "missing"


def ensure_calibration(
    galleries: GalleryStore,
    gallery: str,
    version: str,
    query_model: str,
    fit: Callable[[list[str]], ScoreCalibration],
) -> tuple[ScoreCalibration, str]:
    """Make sure ``query_model`` can be served on this version; fit and store a calibration if needed.

    ``fit(models)`` is called only for a mixed version without one, with the models it holds
    (e.g. embed validation data with each and call ``fit_calibration``). Returns the calibration
    and "single-model", "stored" (already there) or "fitted".
    """
    present = version_models(galleries, gallery, version)
    calibration, how = calibration_for(
        galleries, gallery, version, query_model, require=False, models=present
    )
    if how != "missing":
        return calibration, how
    fitted = fit(present)
    if fitted.query_model != str(query_model):
        raise GalleryError(
            f"the fitted calibration is for queries of model {fitted.query_model!r}, not {query_model!r}"
        )
    write_calibration(galleries, gallery, version, fitted, models=present)
    return fitted, "fitted"


def fit_for_gallery(
    query_model: str,
    models: Mapping[str, EmbeddingModel],
    validation: ImageSet,
    codebooks: DPQCodebooks | None,
    config: CalibrationConfig | None = None,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    fitted_on: dict[str, JsonValue] | None = None,
) -> ScoreCalibration:
    """Fit the calibration of a gallery version for ``query_model``'s queries, as served.

    ``models`` maps every model version the gallery holds (and the query model) to its model;
    each embeds the validation items, which pass through the version's ``codebooks`` (encode,
    decode) the way the gallery stores them; the query model's float features are the queries.
    """
    from hotswap.components.models.training import extract_features

    if str(query_model) not in models:
        raise GalleryError(f"models must include the query model {query_model!r}, got {sorted(models)}")
    feats = {
        str(v): extract_features(m, validation, batch_size=batch_size, device=device)
        for v, m in models.items()
    }
    gallery = {
        v: (codebooks.decode(codebooks.encode(f)) if codebooks is not None else f) for v, f in feats.items()
    }
    return fit_calibration(
        str(query_model),
        feats[str(query_model)],
        validation.labels,
        gallery,
        config=config,
        fitted_on={
            "data": validation.name,
            "items": len(validation),
            "view": "served" if codebooks is not None else "float",
            **(fitted_on or {}),
        },
    )
