"""Small synthetic catalogs written through the Catalog API, as the indexer writes them
(temporary shard, then the job's journal), for tests that need a catalog but no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from simdex.engine.catalog import Catalog
from simdex.indexer.shards import ShardWriter, object_schema


def new_catalog(root: Path, layers: list[tuple]) -> Catalog:
    """An empty catalog whose φ is `layers` [(name, channels) or (name, channels, stride)]."""
    phi, offset = [], 0
    for name, channels, *stride in layers:
        phi.append({"name": name, "channels": channels, "stride": stride[0] if stride else 1, "offset": offset})
        offset += channels
    return Catalog.create(root, {"sha256": "0" * 64, "config": {}, "phi": phi, "num_features": offset,
                                 "region": "bbox"})


def class_objects(n: int, seed: int, classes: list[str], num_features: int, centres_seed: int = 7,
                  dead: tuple[int, ...] = (12,)) -> tuple[np.ndarray, list[str]]:
    """Sparse ReLU features around one centre per class (n, num_features) float32, and each row's
    class; the features in `dead` never fire."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(classes), n)
    centres = np.random.default_rng(centres_seed).normal(0, 1.5, (len(classes), num_features))
    x = np.maximum(centres[labels] + rng.normal(0, 0.7, (n, num_features)) - 0.3, 0).astype(np.float32)
    x[:, list(dead)] = 0
    return x, [classes[i] for i in labels]


def append_objects(cat: Catalog, x: np.ndarray, labels: list[str], job: str, split: str | None = "train",
                   errors: list[dict] | None = None) -> np.ndarray:
    """Commit one shard of objects (features `x`, one label each) and optional error rows;
    return the new objects' ids."""
    meta = [("split", "split", pa.string())] if split is not None else []
    schema = object_schema(cat.num_features, meta)
    n, n_err = len(x), len(errors or [])
    with cat.lock():
        journal = cat.begin_job(job, {"source": job, "num_images": n + n_err})
        start = journal["next_ordinal"]
        nxt = cat.counters()
        ids = np.arange(nxt["object_id"], nxt["object_id"] + n)
        columns = {
            "object_id": ids, "image_id": np.arange(nxt["image_id"], nxt["image_id"] + n),
            "source": [f"{job}/{i}.png" for i in range(start, start + n)], "ordinal": np.arange(start, start + n),
            "component": np.zeros(n, np.int32), "label": labels,
            "x0": np.zeros(n, np.int32), "y0": np.zeros(n, np.int32), "x1": np.full(n, 8, np.int32),
            "y1": np.full(n, 8, np.int32), "area": np.full(n, 64)}
        if split is not None:
            columns["split"] = [split] * n
        writer = ShardWriter(cat, schema)
        writer.add_objects(columns, x)
        if errors:
            writer.add_errors([{"image_id": nxt["image_id"] + n + i, "source": f"{job}/bad{i}.png",
                                "ordinal": start + n + i, **e} for i, e in enumerate(errors)])
        shard_tmp, errors_tmp = writer.close()
        cat.commit(job, shard_tmp=shard_tmp, errors_tmp=errors_tmp, ordinal_start=start,
                   next_ordinal=start + n + n_err, first_object_id=nxt["object_id"], rows=n,
                   first_image_id=nxt["image_id"], images=n + n_err, error_rows=n_err)
    return ids
