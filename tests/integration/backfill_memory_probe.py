"""Run by test_streaming.py in a fresh process: the peak traced allocations of one full backfill
with the gallery streamed from S3, and of the same backfill with every image held in memory."""

import json
import resource
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hotswap.components.data.bundled import in_memory_set
from hotswap.components.data.loading import LoaderConfig, SourceItemSource
from hotswap.components.data.objects import ObjectReader, decode_uint8, manifest_from_frame
from hotswap.components.gallery.backfill import run_backfill
from hotswap.components.gallery.imports import write_feature_version
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.model_spec import ModelSpec, build_user_model
from hotswap.components.quant.dpq import DPQCodebooks


def main() -> None:
    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])
    frame = pd.read_parquet(args["manifest"])
    spec = ModelSpec(**args["spec"])
    model = build_user_model(spec, seed=0).eval()
    books = DPQCodebooks(
        np.random.default_rng(0).normal(0, 0.3, size=(2, 16, spec.embedding_dim)).astype("float32")
    )
    ids = frame["item_id"].to_numpy()
    out = {}
    for kind in ("streamed", "in_memory"):
        galleries = GalleryStore(LocalObjectStore(args["store"] + "/" + kind))
        write_feature_version(
            galleries,
            "g",
            ids,
            np.eye(spec.embedding_dim, dtype="float32")[np.arange(len(ids)) % spec.embedding_dim],
            books,
            model_version="1",
            codebook_version="1",
            version="v1",
            shard_size=128,
            publish=True,
        )
        if kind == "streamed":
            source = SourceItemSource(
                manifest_from_frame(
                    frame, require_labels=False, require_splits=False, reader=ObjectReader(args["endpoint"])
                ),
                model.preprocessing,
                LoaderConfig(32, 2),
            )
            # one-time costs are not the backfill's: botocore's service model, first imports
            source.images(ids[:40])
            source.images(ids[:4])
        tracemalloc.start()
        if kind == "in_memory":  # what holding the image set costs: every image decoded, its view cached
            local = Path(args["local"])
            pixels = np.stack([decode_uint8((local / f"{i}.jpg").read_bytes()) for i in ids])
            held = in_memory_set(pixels, np.zeros(len(ids), dtype="int64"), item_ids=ids.astype(str))
            source = SourceItemSource(held, model.preprocessing)
        run_backfill(
            galleries,
            "g",
            "v1",
            "full",
            model,
            books,
            source,
            model_version="2",
            version="v2",
            shard_size=64,
            workers=1,
            batch_size=64,
        )
        out[kind] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del source
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))
    sys.stderr.write(json.dumps(out))


if __name__ == "__main__":
    main()
