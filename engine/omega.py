"""Feature weights Ω of eq. 4: ω_j ≥ 0, Σ_j ω_j = 1 (DESIGN §4).

Estimators, chosen by name with `make_omega`:

- ``uniform``: ω_j = 1/n (the paper's unweighted mean).
- ``svd``: ω_j ∝ v_1j², the squared loading of the kept feature on the first right
  singular vector (the pruning statistic of paper §2.1).
- ``clusters`` (eq. 5): ω_j ∝ Σ over pairs of clusters (C_i, C_k) of |x̄_Ci,j − x̄_Ck,j|
  on the normalised features. Clusters are classes of a label column, or k-means
  clusters (`kmeans_labels`) when there are no labels.
- ``welch``: ω_j ∝ Σ over pairs of classes of |t_ik,j|, the Welch t-statistic of
  feature j between classes i and k (after Park, "Finding Similar Labels with
  Internal Representations": channels whose class means differ beyond their spread).
- ``learned``: ω fitted by a ranking loss on labelled rows, its pull toward uniform
  chosen on held-out queries (`engine.omega_learned`); needs a labelled sample.

The class statistics are accumulated in one streaming pass (`ClassStats`: per-class
counts, sums and sums of squares in float64), so Ω never needs the whole matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from simdex.engine.errors import SimdexError


class OmegaError(SimdexError, ValueError):
    """Ω cannot be estimated as asked (unknown name, missing labels, a single class)."""


class ClassStats:
    """Per-class count, Σz and Σz² (float64), updated batch by batch."""

    def __init__(self, dim: int):
        self.dim = dim
        self.classes: dict[object, int] = {}
        self._count: list[float] = []
        self._sum: list[np.ndarray] = []
        self._sumsq: list[np.ndarray] = []

    def update(self, z: np.ndarray, labels: np.ndarray) -> None:
        """Add rows z (rows, d) with their labels (rows,); rows whose label is None/NaN are skipped."""
        labels = np.asarray(labels, dtype=object)
        z = np.asarray(z, dtype=np.float64)
        for value in np.unique(labels[~_missing(labels)]):
            rows = z[labels == value]
            slot = self.classes.setdefault(value, len(self.classes))
            if slot == len(self._count):
                self._count.append(0.0)
                self._sum.append(np.zeros(self.dim))
                self._sumsq.append(np.zeros(self.dim))
            self._count[slot] += len(rows)
            self._sum[slot] += rows.sum(axis=0)
            self._sumsq[slot] += np.square(rows).sum(axis=0)

    def without(self, z: np.ndarray, labels: np.ndarray) -> ClassStats:
        """These statistics with the rows z (rows, d) and their labels taken out (a validation split)."""
        removed = ClassStats(self.dim)
        removed.update(z, labels)
        out = ClassStats(self.dim)
        out.classes = dict(self.classes)
        out._count, out._sum, out._sumsq = list(self._count), [s.copy() for s in self._sum], [s.copy() for s in self._sumsq]
        for value, slot in removed.classes.items():
            mine = self.classes[value]
            out._count[mine] -= removed._count[slot]
            out._sum[mine] -= removed._sum[slot]
            out._sumsq[mine] -= removed._sumsq[slot]
        if any(c <= 0 for c in out._count):  # a class held out entirely: drop it
            keep = [k for k, slot in out.classes.items() if out._count[slot] > 0]
            rest = ClassStats(self.dim)
            for k in keep:
                slot = out.classes[k]
                rest.classes[k] = len(rest._count)
                rest._count.append(out._count[slot])
                rest._sum.append(out._sum[slot])
                rest._sumsq.append(out._sumsq[slot])
            out = rest
        return out

    @property
    def counts(self) -> np.ndarray:
        return np.asarray(self._count)

    def sums(self) -> np.ndarray:
        """Σz per class (classes, d), classes in the order of `classes`' values."""
        return np.stack(self._sum)

    def sumsq(self) -> np.ndarray:
        """Σz² per class (classes, d)."""
        return np.stack(self._sumsq)

    def means(self) -> np.ndarray:
        """(classes, d)."""
        return np.stack(self._sum) / self.counts[:, None]

    def variances(self) -> np.ndarray:
        """Unbiased per-class variances (classes, d); 0 for a one-member class."""
        n = self.counts[:, None]
        mean = self.means()
        var = (np.stack(self._sumsq) - n * mean**2) / np.maximum(n - 1, 1)
        return np.maximum(var, 0.0)


def _missing(labels: np.ndarray) -> np.ndarray:
    return np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in labels], dtype=bool)


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.nan_to_num(np.asarray(w, dtype=np.float64), nan=0.0, posinf=0.0)
    total = w.sum()
    if total <= 0:  # nothing discriminates: fall back to equal weights rather than divide by 0
        return np.full(len(w), 1.0 / len(w))
    return w / total


def pairwise_abs_sum(a: np.ndarray) -> np.ndarray:
    """Σ_{i<k} |a_i − a_k| per column of a (classes, d), in O(C log C) per column."""
    s = np.sort(a, axis=0)
    c = a.shape[0]
    coef = 2 * np.arange(c) - c + 1  # sorted a_(i) appears +i times and −(C−1−i) times
    return (s * coef[:, None]).sum(axis=0)


@dataclass
class OmegaInputs:
    dim: int
    v1: np.ndarray | None = None  # (d,) loadings of the kept features on v_1
    class_stats: ClassStats | None = None
    sample_z: np.ndarray | None = None  # (rows, d) labelled z-scored rows for `learned`
    sample_labels: np.ndarray | None = None  # (rows,) their classes
    tau: float = 1.0  # τ of the memberships `learned` is fitted for
    seed: int = 0


class OmegaEstimator(ABC):
    name = ""
    needs_classes = False

    @abstractmethod
    def estimate(self, inputs: OmegaInputs) -> np.ndarray:
        """ω (d,) float64, non-negative, summing to 1."""

    def _stats(self, inputs: OmegaInputs) -> ClassStats:
        stats = inputs.class_stats
        if stats is None or len(stats.classes) < 2:
            found = 0 if stats is None else len(stats.classes)
            raise OmegaError(f"omega {self.name!r} needs at least 2 classes or clusters, found {found}")
        return stats


class UniformOmega(OmegaEstimator):
    name = "uniform"

    def estimate(self, inputs):
        return np.full(inputs.dim, 1.0 / inputs.dim)


class SvdOmega(OmegaEstimator):
    name = "svd"

    def estimate(self, inputs):
        if inputs.v1 is None:
            raise OmegaError("omega 'svd' needs the loadings v_1 of the kept features")
        return _normalise(np.square(inputs.v1))


class ClusterOmega(OmegaEstimator):
    """Eq. 5."""

    name = "clusters"
    needs_classes = True

    def estimate(self, inputs):
        return _normalise(pairwise_abs_sum(self._stats(inputs).means()))


class WelchOmega(OmegaEstimator):
    name = "welch"
    needs_classes = True

    def estimate(self, inputs):
        stats = self._stats(inputs)
        mean, var, n = stats.means(), stats.variances(), stats.counts
        se = var / n[:, None]  # (C, d)
        total = np.zeros(inputs.dim)
        for i in range(len(n)):
            for k in range(i + 1, len(n)):
                denom = np.sqrt(se[i] + se[k])
                t = np.abs(mean[i] - mean[k]) / np.where(denom > 0, denom, np.inf)
                total += t
        return _normalise(total)


class LearnedOmegaEstimator(OmegaEstimator):
    """Ω fitted for retrieval (`engine.omega_learned.learn_omega`) on `sample_z` / `sample_labels`."""

    name = "learned"
    needs_classes = True

    def estimate(self, inputs):
        from simdex.engine.omega_learned import LearnedOmegaConfig, learn_omega

        if inputs.sample_z is None or inputs.sample_labels is None:
            raise OmegaError("omega 'learned' needs labelled rows (sample_z, sample_labels)")
        fit = learn_omega(inputs.sample_z, inputs.sample_labels, inputs.tau, LearnedOmegaConfig(seed=inputs.seed))
        return fit.omega


OMEGAS: dict[str, type[OmegaEstimator]] = {
    c.name: c for c in (UniformOmega, SvdOmega, ClusterOmega, WelchOmega, LearnedOmegaEstimator)}


def make_omega(name: str) -> OmegaEstimator:
    """Ω estimator by name (uniform, svd, clusters, welch, learned).

    Example:
        >>> make_omega("uniform").estimate(OmegaInputs(dim=4)).tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    try:
        return OMEGAS[name]()
    except KeyError:
        raise OmegaError(f"unknown omega {name!r}; choose one of {', '.join(sorted(OMEGAS))}") from None


def kmeans_labels(
    Z: np.ndarray, n_clusters: int = 10, sample_rows: int = 100_000, batch_rows: int = 65536, seed: int = 1234
) -> np.ndarray:
    """k-means (faiss) on a sample of rows of Z, then every row's nearest centroid: int64 (n,)."""
    import faiss

    n, d = Z.shape
    if n < n_clusters:
        raise OmegaError(f"cannot make {n_clusters} clusters from {n} objects")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, sample_rows), replace=False))
    km = faiss.Kmeans(d, n_clusters, niter=20, seed=seed, verbose=False)
    km.train(np.ascontiguousarray(Z[sample], dtype=np.float32))
    labels = np.empty(n, np.int64)
    for a in range(0, n, batch_rows):
        _, idx = km.index.search(np.ascontiguousarray(Z[a : a + batch_rows], dtype=np.float32), 1)
        labels[a : a + batch_rows] = idx[:, 0]
    return labels
