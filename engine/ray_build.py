"""`simdex build --engine ray`: the build's two streaming passes as parallel Ray tasks (DESIGN §10).

    driver: shards ─► contiguous groups ─► task per group: FeatureStats of its rows ─► merged in shard order
                                        └► task per group: z-scores + 8-bit codes  ─► written in row order

Everything else (pruning, Ω, the candidate index, the recall check, publishing) stays on the
driver, in `engine.build`, which calls these passes through the same two methods as its local
ones (`LocalPasses`).

Exact merge: `FeatureStats` are float64 sums (count, Σx, Σx², XᵀX), a min, a max and an "ever
non-zero" flag, so the statistics of a group of shards add (`FeatureStats.merge`); the driver
merges them in shard order, so a build is a pure function of the shards and the grouping. Only
the order of the float64 additions differs from the local pass (relative error ~1e-16): the same
features are kept and the z-scores agree far below float32 resolution. The normalisation tasks
apply the one `Pruning` and codec the driver computed, so their rows are the local ones.

Groups are contiguous shards, balanced by rows (from the Parquet footers), at least four per
worker and about `batch_rows` rows each on large catalogs, so a task's result (its z rows) is
bounded and a lost task is cheap to redo: Ray retries a task whose worker died. At most
`workers` tasks are in flight; the driver takes their results in order and alone writes the
build folder.

The tasks open the shards by path: on a multi-node cluster the catalog must be on a filesystem
every node mounts at the same path (NFS, a cluster file system), and simdex installed on every
node. Ray is optional (`pip install 'simdex[ray]'`) and imported only when a pass runs.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from simdex.engine.pruning import FeatureStats, Pruning, row_normalise
from simdex.engine.quantized import UniformCodec
from simdex.engine.ray_cluster import RayCluster, RayClusterError, require_ray
from simdex.engine.shard_reader import ShardReader

log = logging.getLogger(__name__)

TASKS_PER_WORKER = 4  # groups per worker: keeps every worker busy when groups differ in cost


class RayPasses:
    """The statistics and normalisation passes on the Ray cluster at `address` (None: a local
    one, started on the first pass); at most `workers` tasks at a time (default: the cluster's CPUs).

    Use as a context manager; entering checks that Ray is installed (MissingDependencyError
    names the extra), leaving shuts down a cluster it started.

    Example:
        >>> with RayPasses("auto", workers=8, batch_rows=65536) as passes:   # doctest: +SKIP
        ...     stats = FeatureStats(800)
        ...     for part in passes.feature_stats(catalog.shards()):
        ...         stats.absorb(part)
    """

    def __init__(self, address: str | None = None, workers: int | None = None, batch_rows: int = 65536):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.address = address
        self.requested_workers = workers
        self.batch_rows = int(batch_rows)
        self.workers: int | None = None
        self.tasks = {"statistics": 0, "normalise": 0}
        self._cluster: RayCluster | None = None
        self._ray = None

    def __enter__(self) -> RayPasses:
        require_ray()  # a one-line error before the build reads anything
        return self

    def __exit__(self, *exc) -> None:
        if self._cluster is not None:
            self._cluster.__exit__(*exc)
            self._cluster = self._ray = None

    def info(self) -> dict:
        """What the build records of its engine."""
        return {"name": "ray", "address": self.address, "workers": self.workers, "tasks": dict(self.tasks)}

    def feature_stats(self, reader: ShardReader, row_norm: str = "none") -> Iterator[FeatureStats]:
        """Statistics of `reader`'s rows mapped by `row_norm`, one `FeatureStats` per group of shards,
        in shard order."""
        if not reader.paths:  # every shard's statistics reused: no cluster needed for this pass
            return
        ray = self._session()
        task = ray.remote(num_cpus=1)(_group_stats)
        groups = self._groups(reader)
        self.tasks["statistics"] += len(groups)
        yield from self._in_order(ray, groups, lambda g: task.remote(g, self.batch_rows, row_norm))

    def normalised(self, reader: ShardReader, pruning: Pruning,
                   codec: UniformCodec) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(object ids (n,), z float32 (n, d), codes uint8 (n, d)) of `reader`'s rows, group by group,
        in row order."""
        ray = self._session()
        task = ray.remote(num_cpus=1)(_group_normalised)
        groups = self._groups(reader)
        self.tasks["normalise"] += len(groups)
        pruning_ref, codec_ref = ray.put(pruning), ray.put(codec)  # shipped once, not once per task
        yield from self._in_order(ray, groups, lambda g: task.remote(g, pruning_ref, codec_ref, self.batch_rows))

    # ------------------------------------------------------------------------------------------------

    def _session(self):
        if self._ray is None:
            cluster = RayCluster(self.address)
            self._ray = cluster.__enter__()
            self._cluster = cluster
            cpus = max(1, int(self._ray.cluster_resources().get("CPU", 1)))
            self.workers = self.requested_workers or cpus
            log.info("build passes on Ray: %d workers (the cluster has %d CPUs)", self.workers, cpus)
        return self._ray

    def _groups(self, reader: ShardReader) -> list[ShardReader]:
        rows = reader.shard_rows()
        n_groups = max(TASKS_PER_WORKER * self.workers, math.ceil(sum(rows) / max(1, self.batch_rows)))
        return [reader.subset(a, b) for a, b in balanced_groups(rows, n_groups)]

    def _in_order(self, ray, groups: list[ShardReader], submit: Callable) -> Iterator:
        """Results of `submit(group)` in group order, with at most `workers` tasks in flight."""
        pending: deque = deque()
        for group in groups:
            pending.append((group, submit(group)))
            if len(pending) >= self.workers:
                yield _result(ray, *pending.popleft())
        while pending:
            yield _result(ray, *pending.popleft())


def balanced_groups(rows: list[int], n_groups: int) -> list[tuple[int, int]]:
    """Split shards with `rows` rows each into at most `n_groups` contiguous, non-empty [start, stop)
    ranges of about equal rows (every shard in exactly one range, in order).

    Example:
        >>> balanced_groups([10, 10, 10, 10], 2)
        [(0, 2), (2, 4)]
    """
    if not rows:
        return []
    n_groups = max(1, min(int(n_groups), len(rows)))
    cum = np.cumsum(np.asarray(rows, np.int64))
    out, start = [], 0
    for g in range(1, n_groups):
        stop = int(np.searchsorted(cum, cum[-1] * g / n_groups, side="left")) + 1
        if start < stop < len(rows):
            out.append((start, stop))
            start = stop
    out.append((start, len(rows)))
    return out


def _result(ray, group: ShardReader, ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, OSError):
            names = ", ".join(p.name for p in group.paths[:3]) + (" …" if len(group.paths) > 3 else "")
            raise RayClusterError(
                f"a Ray worker cannot read shard(s) {names}: {cause}; with --engine ray the catalog must be on "
                "a filesystem every Ray node mounts at the same path") from None
        raise


def _group_stats(reader: ShardReader, batch_rows: int, row_norm: str = "none") -> FeatureStats:
    """A task: the statistics of one group's rows (mapped by `row_norm`)."""
    stats = FeatureStats(reader.num_features)
    for _, x in reader.iter_features(batch_rows):
        stats.update(row_normalise(x, row_norm))
    return stats


def _group_normalised(reader: ShardReader, pruning: Pruning, codec: UniformCodec,
                      batch_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A task: ids, z-scores and 8-bit codes of one group's rows (as the local pass computes them)."""
    ids, zs, codes = [], [], []
    for batch_ids, x in reader.iter_features(batch_rows):
        z = pruning.normalise(x)  # (n, d) float32
        ids.append(batch_ids)
        zs.append(z)
        codes.append(codec.encode(z))
    if not ids:
        d = len(pruning.kept)
        return np.empty(0, np.int64), np.empty((0, d), np.float32), np.empty((0, d), np.uint8)
    return np.concatenate(ids), np.concatenate(zs), np.concatenate(codes)
