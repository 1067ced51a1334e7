"""Search a gallery version with calibrated scores: one faiss sub-index per provenance model.

A mixed gallery (after a skip or a partial backfill) holds items embedded by several models, so
raw inner products of one query model against them are on several scales (components/
calibration.py). The stored index ranks every item by raw score; instead, the searcher splits it
into one sub-index per provenance model (a clone of the stored index with the other segments'
rows removed: same codebooks, same codes, exact), searches each for the top k, maps each
segment's scores with the calibration for the query model, and merges by calibrated score. This
is exact — the global top k by calibrated score is among the union of each segment's top k,
because an affine map with positive scale keeps a segment's order — and simple: segments are few.
A single-model gallery keeps the one stored index and the identity (pass its model's name as
``provenance``: no per-item array is needed). The query service (components/serving/searcher.py)
opens every version through this class.

The stored index's ids are gallery row numbers (how the pipeline builds it), mapped back to item
ids through the version's shards.
"""

from __future__ import annotations

import faiss
import numpy as np
from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.gallery.calibration import calibration_for
from hotswap.components.gallery.records import GalleryError
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.quant.index import index_from_bytes, search


class GallerySearcher:
    """Calibrated top-k search over one gallery version for queries of one model.

    Build it with :meth:`from_version` (reads the index, ids, provenance and the calibration from
    the store) or directly from an index and arrays. ``search`` is thread-safe for concurrent
    callers as faiss searches are.
    """

    def __init__(
        self,
        index: faiss.Index | bytes,
        item_ids: np.ndarray,
        provenance: np.ndarray | str,
        calibration: ScoreCalibration,
        *,
        nprobe: int | None = None,
        gallery_version: str | None = None,
        calibration_source: str = "given",
    ) -> None:
        index = index_from_bytes(index) if isinstance(index, bytes | bytearray | memoryview) else index
        ids = np.asarray(item_ids)
        if isinstance(provenance, str):  # a single-model version: no per-item array to scan
            models, segments = None, [provenance]
            if ids.ndim != 1:
                raise ValueError(f"item_ids {ids.shape} must be 1-D")
        else:
            models = np.asarray(provenance).astype(str)
            if ids.ndim != 1 or models.shape != ids.shape:
                raise ValueError(f"item_ids {ids.shape} and provenance {models.shape} must be 1-D, aligned")
            segments = sorted(set(models.tolist()))
        if index.ntotal != len(ids):
            raise ValueError(f"the index holds {index.ntotal} items, the gallery {len(ids)}")
        if len(ids) == 0:
            raise ValueError("the gallery is empty")
        if not calibration.covers(segments):
            missing = sorted(set(segments) - set(calibration.models))
            raise ValueError(
                f"the calibration for queries of model {calibration.query_model!r} has no map for gallery "
                f"models {missing}"
            )
        # kept in their stored dtype: converting a million int64 ids to str holds the GIL for ~1 s,
        # which would stall every query of a service while it loads the next version; only the
        # returned ids are converted
        self.item_ids = ids
        self.calibration = calibration
        self.calibration_source = calibration_source
        self.gallery_version = gallery_version
        self.nprobe = nprobe
        self.dim = int(index.d)
        self.segments: list[tuple[str, faiss.Index, int]] = []
        if models is None or len(segments) == 1:
            self.segments.append((segments[0], index, len(ids)))
        else:
            for model in segments:
                others = np.flatnonzero(models != model).astype(np.int64)
                sub = faiss.clone_index(index)
                removed = sub.remove_ids(faiss.IDSelectorBatch(others))
                if removed != len(others):
                    raise ValueError(
                        f"the index's ids are not the gallery row numbers 0..{len(ids) - 1} "
                        f"(removing model {model!r}'s complement removed {removed} of {len(others)})"
                    )
                self.segments.append((model, sub, len(ids) - len(others)))

    @classmethod
    def from_version(
        cls,
        galleries: GalleryStore,
        gallery: str,
        version: str,
        query_model: str,
        *,
        calibration: ScoreCalibration | None = None,
        require_calibration: bool = True,
        nprobe: int | None = None,
    ) -> GallerySearcher:
        """The searcher of a stored version for queries of ``query_model``.

        The calibration is the one stored in the version for that model (identity for a single-
        model version); a mixed version without one raises ``CalibrationMissingError`` unless
        ``require_calibration=False`` (then scores are served raw, as before calibrations).
        """
        from hotswap.components.gallery.provenance import feature_spaces

        index_bytes = galleries.load_index(gallery, version)
        if index_bytes is None:
            raise GalleryError(f"gallery {gallery!r} version {version!r} has no index")
        arrays = galleries.load_arrays(gallery, version)
        provenance = feature_spaces(galleries, gallery, version)  # calibration groups rows by space
        source = "given"
        if calibration is None:
            present = sorted(set(provenance.tolist()))
            calibration, source = calibration_for(
                galleries, gallery, version, query_model, require=require_calibration, models=present
            )
        return cls(
            index_bytes,
            arrays.ids,
            provenance,
            calibration,
            nprobe=nprobe,
            gallery_version=version,
            calibration_source=source,
        )

    @property
    def ntotal(self) -> int:
        return len(self.item_ids)

    @property
    def mixed(self) -> bool:
        return len(self.segments) > 1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by calibrated score: (scores float32 [nq, k], item ids str [nq, k]).

        ``k`` larger than the gallery returns every item. Rows missing from an approximate (IVF)
        search are padded with score −inf and item id "".
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), len(self.item_ids))
        all_scores, all_rows = [], []
        for model, index, size in self.segments:
            found = search(index, queries, k=min(k, size), nprobe=self.nprobe)
            scores = found.scores.astype(np.float64)
            valid = found.ids >= 0
            scores = np.where(valid, scores, -np.inf)
            adjusted = self.calibration.adjust(scores, np.full(scores.shape, model))
            all_scores.append(adjusted)
            all_rows.append(found.ids)
        scores = np.concatenate(all_scores, axis=1)
        rows = np.concatenate(all_rows, axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, top, axis=1)
        rows = np.take_along_axis(rows, top, axis=1)
        if (rows >= len(self.item_ids)).any():
            raise ValueError(f"the index returned rows outside its id map (0..{len(self.item_ids) - 1})")
        ids = np.where(rows >= 0, self.item_ids[np.clip(rows, 0, None)].astype(str), "")
        return scores.astype(np.float32), ids.astype(str)
