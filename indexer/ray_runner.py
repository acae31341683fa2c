"""`simdex index --engine ray`: the bulk indexing job on a Ray cluster (DESIGN §10).

    Ray Data: chunk k ─► model actor: decode images [first, first + batch_size) ─► SparseUNet ─► objects
                                                                           │ (Arrow rows per chunk)
    driver: chunks in ordinal order ─► the runner's _Committer ─► ShardWriter ─► Catalog.commit (journal)

Ray Data plans the job as chunks of the source's ordinals (one per batch of the local
runner) and streams them through a pool of model actors, one model per actor (a GPU each
when the cluster has GPUs). Each actor decodes its chunk from the source (shipped once
through the object store), segments it and extracts the objects' features with the same
functions as the local runner (`runner.batch_objects`).

Only the driver writes to the catalog, and it takes the chunks in ordinal order
(`preserve_order`) and hands them to the same committer as the local engine: every
`shard_images` images a shard is renamed into place and journalled. So the semantics are
the local runner's: ids are dense in commit order and equal a single-process run's; a model
actor that dies is restarted by Ray and its chunk retried (chunks are pure functions of
their ordinals, so a retry gives the same rows); a driver that dies loses only its
uncommitted shard, and the same command resumes at the journal's next ordinal.

Ray is optional (`pip install 'simdex[ray]'`); this module imports it lazily.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from simdex.engine import ray_cluster
from simdex.engine.ray_cluster import RAY_EXTRA_HINT, RayClusterError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def require_ray():
    """The `ray` module with Ray Data, or MissingDependencyError with the extra to install."""
    return ray_cluster.require_ray(data=True)


class RayCluster(ray_cluster.RayCluster):
    """`engine.ray_cluster.RayCluster` with Ray Data set up for the job: chunks in ordinal order,
    no progress bars."""

    def __init__(self, address: str | None = None):
        super().__init__(address, data=True)

    def __enter__(self):
        ray = super().__enter__()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True  # the committer takes chunks in ordinal order
        return ray


def cluster_workers(ray, requested: int | None) -> tuple[int, float, float]:
    """(model actors, CPUs and GPUs per actor): one actor per GPU when the cluster has GPUs, else
    one per CPU; `requested` overrides the count."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if gpus:
        workers = requested or gpus
        return workers, max(1.0, min(4.0, cpus / workers)), 1.0
    workers = requested or cpus
    return workers, max(0.25, min(1.0, cpus / workers)), 0.0


class _ChunkIndexer:
    """A model actor: turns chunk numbers into the rows of their images (Arrow IPC, one per chunk)."""

    def __init__(self, source_ref, model_ref, options, start: int, end: int, threads: int, gpu: bool):
        import ray
        import torch

        from simdex.indexer.runner import _DecodedBatches, inference_net

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
        self.source = ray.get(source_ref)
        self.net = inference_net(ray.get(model_ref), self.device)
        self.options = options
        cfg = self.net.config
        self.decoded = _DecodedBatches(self.source, start, end, options.batch_size, cfg.in_channels, cfg.image_size)

    def __call__(self, batch: dict) -> dict:
        from simdex.indexer.runner import batch_objects

        firsts, counts, rows, errors = [], [], [], []
        for k in batch["data"].tolist():
            decoded = self.decoded[k]
            objs = batch_objects(self.net, decoded, self.options, self.device)
            firsts.append(decoded["first"])
            counts.append(decoded["count"])
            rows.append(_objects_to_ipc(objs))
            errors.append(_errors_to_ipc(objs.errors))
        return {"first": np.asarray(firsts, np.int64), "count": np.asarray(counts, np.int64),
                "objects": np.array(rows, dtype=object), "errors": np.array(errors, dtype=object)}


def run_on_ray(src, loaded, options, committer) -> None:
    """Index the committer's ordinal range [start, end) of `src` on Ray (see the module's docstring)."""
    from simdex.indexer.runner import BatchObjects

    with RayCluster(options.address) as ray:
        workers, cpus, gpus = cluster_workers(ray, options.workers)
        options.workers = workers
        n_chunks = math.ceil((committer.end - committer.start) / options.batch_size)
        log.info("indexing %d chunks on Ray with %d model actors (%.2g CPU, %g GPU each)", n_chunks, workers, cpus, gpus)
        source_ref, model_ref = ray.put(src), ray.put(loaded.model.cpu())
        # the chunk numbers as in-memory blocks: no read tasks to compete with actors that fill the cluster
        blocks = np.array_split(np.arange(n_chunks, dtype=np.int64), min(n_chunks, 4 * workers))
        ds = ray.data.from_numpy(blocks).map_batches(
            _ChunkIndexer, batch_size=1, batch_format="numpy", num_cpus=cpus, num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_args=(source_ref, model_ref, options, committer.start, committer.end,
                                 max(1, int(cpus)), gpus > 0),
        )
        for row in ds.iter_rows():
            ordinals, component, boxes, areas, feats = _objects_from_ipc(row["objects"])
            objs = BatchObjects(ordinals, component, boxes, areas, feats, _errors_from_ipc(row["errors"]))
            committer.add(int(row["first"]), int(row["count"]), objs)
    if committer.next_ordinal != committer.end:
        from simdex.engine.catalog import CatalogError

        raise CatalogError(f"the Ray job ended at ordinal {committer.next_ordinal} of {committer.end}; "
                           "rerun the same command to resume it")


# ----------------------------------------------------------------------------- chunk rows as Arrow IPC


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _read_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def _objects_to_ipc(objs) -> bytes:
    n, width = objs.features.shape
    flat = pa.array(np.ascontiguousarray(objs.features, np.float32).reshape(-1), pa.float32())
    return _ipc(pa.table({
        "ordinal": pa.array(objs.ordinals, pa.int64()), "component": pa.array(objs.component, pa.int64()),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(objs.boxes.reshape(-1), pa.int32()), 4),
        "area": pa.array(objs.areas, pa.int64()),
        "features": pa.FixedSizeListArray.from_arrays(flat, width),
    }))


def _objects_from_ipc(blob: bytes):
    t = _read_ipc(blob)
    n = t.num_rows
    feats = t.column("features").combine_chunks()
    width = feats.type.list_size
    return (t.column("ordinal").to_numpy(), t.column("component").to_numpy(),
            t.column("box").combine_chunks().flatten().to_numpy().reshape(n, 4).astype(np.int32),
            t.column("area").to_numpy(),
            feats.flatten().to_numpy(zero_copy_only=False).reshape(n, width).astype(np.float32, copy=False))


def _errors_to_ipc(errors: list[tuple[int, str, str]]) -> bytes:
    return _ipc(pa.table({"ordinal": pa.array([e[0] for e in errors], pa.int64()),
                          "reason": pa.array([e[1] for e in errors], pa.string()),
                          "detail": pa.array([e[2] for e in errors], pa.string())}))


def _errors_from_ipc(blob: bytes) -> list[tuple[int, str, str]]:
    t = _read_ipc(blob).to_pydict()
    return list(zip(t["ordinal"], t["reason"], t["detail"]))
