"""Active features, SVD pruning and z-score statistics, from one streaming pass (DESIGN §4, paper §2.1).

`FeatureStats` accumulates, batch by batch over the raw features X (rows, N):
per-feature "ever non-zero" flags, the Gram matrix XᵀX (float64, N×N), Σx, Σx²,
min and max. `Pruning.from_stats` then

1. drops inactive features (zero for every object);
2. takes v_1, the top eigenvector of the Gram matrix — the first right singular
   vector of the *uncentred* X = TΣVᵀ, as in the paper — restricted to the active
   features, and keeps the smallest set of features whose squared loadings v_1j²
   sum to at least `retain` (features ranked by v_1j²; Σ_j v_1j² = 1);
3. stores the mean and standard deviation of each kept feature (z-score).

Accumulators add (`merge`), so statistics of appended shards are combined with
the saved ones instead of re-reading the old shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simdex.engine.errors import SimdexError


class PruningError(SimdexError, ValueError):
    """Statistics that cannot be pruned (no rows, no active feature, bad retain)."""


class FeatureStats:
    """One-pass statistics of raw features (rows, N)."""

    def __init__(self, num_features: int):
        self.num_features = num_features
        self.count = 0
        self.active = np.zeros(num_features, bool)
        self.gram = np.zeros((num_features, num_features), np.float64)
        self.sum = np.zeros(num_features, np.float64)
        self.sumsq = np.zeros(num_features, np.float64)
        self.min = np.full(num_features, np.inf)
        self.max = np.full(num_features, -np.inf)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise PruningError(f"batch has shape {x.shape}, expected (rows, {self.num_features})")
        if len(x) == 0:
            return
        x64 = x.astype(np.float64)
        self.count += len(x)
        self.gram += x64.T @ x64  # (N, N); numpy hands AᵀA to BLAS syrk
        self.sum += x64.sum(axis=0)
        self.sumsq += np.einsum("ij,ij->j", x64, x64)
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.min = np.minimum(self.min, lo)
        self.max = np.maximum(self.max, hi)
        self.active |= (lo != 0) | (hi != 0)  # some value is non-zero

    def merge(self, other: FeatureStats) -> FeatureStats:
        """New statistics of both parts' rows (self and other unchanged)."""
        out = FeatureStats(self.num_features)
        return out.absorb(self).absorb(other)

    def absorb(self, other: FeatureStats) -> FeatureStats:
        """Add `other`'s rows to these statistics in place (the same float64 additions as `merge`,
        without a third N×N Gram matrix: 128 MB at 4,000 features); returns self."""
        if other.num_features != self.num_features:
            raise PruningError("cannot merge statistics of different feature counts")
        self.count += other.count
        self.active |= other.active
        self.gram += other.gram
        self.sum += other.sum
        self.sumsq += other.sumsq
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)
        return self

    def save(self, path: Path) -> None:
        np.savez(path, count=self.count, active=self.active, gram=self.gram, sum=self.sum,
                 sumsq=self.sumsq, min=self.min, max=self.max)

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(path) as f:
            out = cls(int(f["gram"].shape[0]))
            out.count = int(f["count"])
            out.active, out.gram, out.sum, out.sumsq = f["active"], f["gram"], f["sum"], f["sumsq"]
            out.min, out.max = f["min"], f["max"]
        return out


ROW_NORMS = ("none", "l2")


def row_normalise(x: np.ndarray, row_norm: str) -> np.ndarray:
    """The per-object map the build applies to raw vectors before its statistics and z-scores.

    ``none``: the raw means (the paper). ``l2``: each row divided by its length, so an object's
    overall contrast and size stop counting as what it is (Fashion-MNIST mAP 0.469 → 0.504,
    benchmarks/results/bench_row_norm_fmnist.md). An all-zero row stays zero.
    """
    lengths = row_lengths(x, row_norm)
    return x if lengths is None else np.asarray(x, dtype=np.float64) / lengths[:, None]


def row_lengths(x: np.ndarray, row_norm: str) -> np.ndarray | None:
    """What `row_normalise` divides each row by (float64 (rows,)), or None for ``none``: so a caller
    that needs only some columns divides those alone."""
    if row_norm == "none":
        return None
    if row_norm == "l2":  # squares summed in float64 without a float64 copy of the batch
        return np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)), 1e-30)
    raise PruningError(f"unknown row normalisation {row_norm!r}: choose one of {', '.join(ROW_NORMS)}")


@dataclass
class Pruning:
    """Result of pruning: which raw features are kept and how they are z-scored."""

    active: np.ndarray  # bool (N,)
    v1: np.ndarray  # float64 (N,), unit norm, 0 on inactive features
    kept: np.ndarray  # int64 (n,) raw feature indices, ascending
    mean: np.ndarray  # float64 (n,)
    std: np.ndarray  # float64 (n,)
    z_min: np.ndarray  # float64 (n,) smallest z of each kept feature in the catalog
    z_max: np.ndarray  # float64 (n,)
    retain: float
    retained: float  # Σ v_1j² over the kept features
    row_norm: str = "none"  # the map of raw rows before statistics and z-scores (`row_normalise`)

    @classmethod
    def from_stats(cls, stats: FeatureStats, retain: float = 0.99, row_norm: str = "none") -> Pruning:
        """Prune from accumulated statistics (of rows mapped by `row_norm`).

        Raises:
            PruningError: no objects, no active feature, or retain outside (0, 1].

        Example:
            >>> s = FeatureStats(3); s.update(np.array([[1.0, 0, 0], [2, 0, 1]]))
            >>> Pruning.from_stats(s, retain=0.9).kept.tolist()
            [0]
        """
        if not 0 < retain <= 1:
            raise PruningError(f"retain must be in (0, 1], got {retain}")
        if stats.count == 0:
            raise PruningError("no objects: the catalog is empty")
        active = stats.active.copy()
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            raise PruningError("every feature is zero for every object: nothing to index")
        # uncentred SVD: v_1 = top eigenvector of XᵀX on the active features
        _, vecs = np.linalg.eigh(stats.gram[np.ix_(idx, idx)])
        v_active = vecs[:, -1]
        v_active = v_active if v_active.sum() >= 0 else -v_active  # sign is arbitrary; make it readable
        v1 = np.zeros(stats.num_features)
        v1[idx] = v_active
        loading = np.square(v_active)
        order = np.argsort(-loading, kind="stable")
        cumulative = np.cumsum(loading[order])
        # smallest prefix whose sum reaches retain (tolerance for float round-off at retain = 1)
        n_keep = int(np.searchsorted(cumulative, retain - 1e-12) + 1)
        n_keep = min(n_keep, len(idx))
        kept = np.sort(idx[order[:n_keep]])
        n = stats.count
        mean = stats.sum[kept] / n
        var = np.maximum(stats.sumsq[kept] / n - mean**2, 0.0)
        std = np.sqrt(var)
        std = np.where(std > 0, std, 1.0)  # a constant-but-active feature cannot happen, but never divide by 0
        return cls(active=active, v1=v1, kept=kept, mean=mean, std=std,
                   z_min=(stats.min[kept] - mean) / std, z_max=(stats.max[kept] - mean) / std,
                   retain=retain, retained=float(cumulative[n_keep - 1]), row_norm=row_norm)

    @property
    def v1_kept(self) -> np.ndarray:
        """Loadings of the kept features on v_1 (the `svd` Ω)."""
        return self.v1[self.kept]

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw features (rows, N) → z-scored kept features (rows, n) float32 (after the row map)."""
        x = np.asarray(x)
        lengths = row_lengths(x, self.row_norm)  # of the whole row; only the kept columns are divided
        kept = x[:, self.kept] if lengths is None else x[:, self.kept] / lengths[:, None]
        z = (kept - self.mean) / self.std
        return z.astype(np.float32)

    def table_iii(self, phi: list[dict]) -> list[dict]:
        """The paper's Table III: per layer of φ, initial, active and kept feature counts.

        Args:
            phi: [{name, channels, offset, ...}] in feature order.

        Returns:
            one dict per layer plus a final ``total`` row.
        """
        kept_mask = np.zeros(len(self.active), bool)
        kept_mask[self.kept] = True
        rows = []
        for layer in phi:
            a, b = int(layer["offset"]), int(layer["offset"]) + int(layer["channels"])
            rows.append({"layer": layer["name"], "initial": b - a, "active": int(self.active[a:b].sum()),
                         "kept": int(kept_mask[a:b].sum())})
        rows.append({"layer": "total", "initial": sum(r["initial"] for r in rows),
                     "active": sum(r["active"] for r in rows), "kept": sum(r["kept"] for r in rows)})
        return rows


def table_iii_by_layer(rows: list[dict]) -> list[dict]:
    """Table III with one row per layer of the model: the cells of a grid region (`C11@m`,
    `C11@00`, …) summed into their layer, as the build prints it and the report shows it (the
    build's record and the SQL view `table_iii` keep each cell)."""
    layers: dict[str, dict] = {}
    for r in rows:
        name = str(r["layer"]).split("@")[0]
        row = layers.setdefault(name, {"layer": name, "initial": 0, "active": 0, "kept": 0})
        for key in ("initial", "active", "kept"):
            row[key] += int(r[key])
    return list(layers.values())


def format_table_iii(rows: list[dict]) -> str:
    """Table III as aligned text, one row per layer (`table_iii_by_layer`)."""
    from simdex.engine.text_table import text_table

    cells = [[str(r["layer"]), str(r["initial"]), str(r["active"]), str(r["kept"])] for r in table_iii_by_layer(rows)]
    return text_table(["layer", "initial", "active", "kept"], cells, right={1, 2, 3}, sep="", min_widths=(10, 9, 9, 9))
