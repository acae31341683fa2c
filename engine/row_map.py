"""An Ω's row map: the space in which its memberships are measured, derived from the stored z.

The build stores one matrix of z-scores (`z.npy`: the kept features of each object, minus the
catalog's mean, over its standard deviation). Fuzzy P on those z-scores counts an object's overall
strength (its contrast, its size) as part of what it is: that tells an item's copies apart from
other items, but it blurs classes, where the cosine of the raw vectors, which divides by each
object's length, ranks better (scenes class mAP 0.0994 against 0.0972 for the best Ω on z,
benchmarks/results/omega_loss_scenes_class.md). So an Ω may be measured in a second space:

    ``l2``: each object's kept raw features x (= z·σ + μ) divided by their length ‖x‖, then
    z-scored again over the build's objects: z' = (x/‖x‖ − μ') / σ'.

It is a function of the stored z alone, so `simdex build` derives it (`UnitLengthMap.fit`, one
pass over z), fits a label column's Ω in both spaces and keeps the one that ranks held-out queries
better (engine/build.py), and writes the mapped matrix (`z_l2.npy`) only when some Ω uses it.
Queries with that Ω map the query the same way (`UnitLengthMap.apply`) and scan the mapped matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from simdex.engine.pruning import row_lengths


def unit_rows(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Stored z (rows, d) → the kept raw features divided by their length (float64; a zero row stays 0)."""
    x = np.asarray(z, np.float64) * std + mean
    return x / row_lengths(x, "l2")[:, None]


def _chunks(Z: np.ndarray, batch_rows: int) -> Iterator[np.ndarray]:
    for a in range(0, len(Z), batch_rows):
        yield np.asarray(Z[a : a + batch_rows])


@dataclass(frozen=True)
class UnitLengthMap:
    """The ``l2`` row map of one build: z (stored) → z' (module docstring)."""

    mean: np.ndarray  # (d,) float64: the stored z's feature means (Pruning.mean) …
    std: np.ndarray  # … and standard deviations (Pruning.std)
    unit_mean: np.ndarray  # (d,) float64: μ', σ' of the unit-length rows over the build's objects
    unit_std: np.ndarray

    @classmethod
    def fit(cls, Z: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_rows: int = 65536) -> UnitLengthMap:
        """μ' and σ' of the unit-length rows of Z (one pass, batch by batch).

        Example:
            >>> Z = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], np.float32)
            >>> m = UnitLengthMap.fit(Z, mean=np.array([2.0, 2.0]), std=np.ones(2))
            >>> [round(float(v), 3) for v in m.apply(Z)[0]]
            [1.118, -1.309]
        """
        total = np.zeros(len(mean))
        squares = np.zeros(len(mean))
        for z in _chunks(Z, batch_rows):
            y = unit_rows(z, mean, std)
            total += y.sum(axis=0)
            squares += np.einsum("ij,ij->j", y, y)
        n = max(1, len(Z))
        unit_mean = total / n
        unit_std = np.sqrt(np.maximum(squares / n - unit_mean**2, 0.0))
        return cls(np.asarray(mean, np.float64), np.asarray(std, np.float64), unit_mean,
                   np.where(unit_std > 0, unit_std, 1.0))

    def apply(self, z: np.ndarray) -> np.ndarray:
        """Stored z (rows, d) → z' (rows, d) float32."""
        return ((unit_rows(np.atleast_2d(z), self.mean, self.std) - self.unit_mean) / self.unit_std).astype(np.float32)

    def write(self, Z: np.ndarray, out: np.ndarray, batch_rows: int = 65536) -> None:
        """Map every row of Z into `out` (a matrix of the same shape, e.g. a memory map)."""
        for a, z in zip(range(0, len(Z), batch_rows), _chunks(Z, batch_rows)):
            out[a : a + len(z)] = self.apply(z)
