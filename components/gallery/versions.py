"""Versioned, sharded, resumable galleries with an atomic switch (DESIGN.md §8).

A gallery is the searchable side of retrieval: item ids with their float features and/or
quantized codes, plus a serialized faiss index. Upgrading the model rewrites it (fully,
partially or only its codes), which can take hours on a real gallery, so a rewrite must survive a
crash and must never expose a half-built state. Layout, under any :class:`ObjectStore`::

    galleries/<gallery>/CURRENT                               live-version pointer (JSON)
    galleries/<gallery>/versions/<vid>/staging.json           the job's parameters, fixed at begin
    galleries/<gallery>/versions/<vid>/shards/<n>.features.npy
    galleries/<gallery>/versions/<vid>/shards/<n>.codes.npy
    galleries/<gallery>/versions/<vid>/shards/<n>.ids.npy
    galleries/<gallery>/versions/<vid>/shards/<n>.json        shard commit record (sizes, sha256)
    galleries/<gallery>/versions/<vid>/manifest.json          the finished version (all checksums)
    galleries/<gallery>/versions/<vid>/index.faiss            optional index bytes
    galleries/<gallery>/versions/<vid>/PUBLISHED              seal: CURRENT has pointed here

``<n>`` is zero-padded to six digits so listings sort in shard order.

Write protocol and why it is safe:

1. ``begin_version`` writes ``staging.json``. Nothing is visible: readers only follow CURRENT.
2. ``write_shard(n)`` writes the shard's ``.npy`` files, then the shard record last. A shard counts
   as done only if its record parses and every file's sha256 matches it, so a crash mid-shard
   (files without record, or a torn file) simply makes the shard pending again. A rerun skips
   done shards without rewriting them.
3. ``finalize`` gathers the verified shard records into ``manifest.json`` (then the index).
   ``created_at`` comes from the staging record, so a resumed run produces byte-identical files.
4. ``publish`` checks every file the manifest names exists (optionally re-verifies checksums),
   writes the ``PUBLISHED`` seal, then writes CURRENT. Writing CURRENT is the only visibility
   change, and each store put is atomic, so a reader sees the old version or the new one whole.

Once sealed a version is immutable: writers refuse to touch it and it cannot be discarded.
``set_current`` moves the pointer back (a transaction rollback) and accepts ``None`` to remove
CURRENT when the rolled-back publish was the gallery's first.

Records, layout and errors live in components/gallery/records.py. The code is split by job:
reading in components/gallery/version_reader.py, staging in components/gallery/version_staging.py,
shard writing and finalizing in components/gallery/version_writer.py, and publishing (the CURRENT
pointer) in components/gallery/publishing.py; :class:`GalleryStore` here puts them together.

One writer job per gallery version is assumed (the gallery's lease, components/gallery/lease.py);
``expected_current`` gives an optimistic check against a concurrent switch, not a lock.
"""

from __future__ import annotations

from hotswap.components.gallery.publishing import VersionPublishing
from hotswap.components.gallery.version_staging import VersionStaging


class GalleryStore(VersionStaging, VersionPublishing):
    """Read, write, publish and roll back gallery versions in one :class:`ObjectStore`."""
