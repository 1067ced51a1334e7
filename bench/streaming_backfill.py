"""One full backfill of a streamed gallery, in its own process (run by bench/streaming.py), so
its peak resident memory is the backfill's and not the benchmark's."""

import json
import resource
import sys
import time

import numpy as np
import pandas as pd
import torch

from components.backfill import run_backfill
from components.gallery import GalleryStore
from components.gallery_import import write_feature_version
from components.model_spec import ModelSpec, build_user_model
from components.quantization import DPQCodebooks
from components.store import LocalObjectStore
from components.streaming import LoaderConfig, ManifestItemSource, ObjectReader, manifest_from_frame


def main() -> None:
    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])
    frame = pd.read_parquet(args["manifest"])
    model = build_user_model(ModelSpec(**args["spec"]), seed=0).eval()
    d = model.embedding_dim
    books = DPQCodebooks(np.random.default_rng(0).normal(0, 0.2, size=(4, 256, d)).astype("float32"))
    galleries = GalleryStore(LocalObjectStore(args["store"], fsync=False))
    ids = frame["item_id"].to_numpy()
    identity = np.eye(d, dtype="float32")[np.arange(len(ids)) % d]
    write_feature_version(
        galleries,
        "g",
        ids,
        identity,
        books,
        model_version="1",
        codebook_version="1",
        version="v1",
        shard_size=args["shard"],
        publish=True,
    )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gallery = manifest_from_frame(frame, require_labels=False, require_splits=False)
    source = ManifestItemSource(
        gallery, model.preprocessing, ObjectReader(), LoaderConfig(256, args["workers"])
    )
    start = time.perf_counter()
    manifest = run_backfill(
        galleries,
        "g",
        "v1",
        "full",
        model,
        books,
        source,
        model_version="2",
        version="v2",
        shard_size=args["shard"],
        workers=1,
        batch_size=256,
    )
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "items": manifest.num_items,
                "seconds": seconds,
                "maxrss_mib": usage / 1024,
                "maxrss_before_backfill_mib": base / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
