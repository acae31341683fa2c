"""Fuzzy memberships g_ij of catalog values to a query, per feature (DESIGN §4, eqs. 2–3).

Every membership works on z-scored features (σ_j = 1 after normalisation), is a
function of one feature value at a time, and returns values in [0, 1]:

- ``gaussian`` (eq. 2): g = exp(−((z − z_q)/τ)²) for a single query.
- ``trapezoid`` (eq. 3) for a set of queries Q: 1 on the support [min_Q, max_Q] of
  each feature, linear shoulders of width Δ = τ·(max_Q − min_Q) on both sides.
  Where max_Q = min_Q (one query, or a feature on which all queries agree) the
  trapezoid would collapse to a spike of zero width, so Δ is floored at τ·σ_j = τ:
  a one-query trapezoid is the triangle below.
- ``triangle``: apex at the mean of the queries, feet at ±Δ around it with
  Δ = max(τ, τ·(max_Q − min_Q)) (the trapezoid's shoulder with its plateau removed).
- ``max``: the per-feature maximum of the queries' Gaussians (a fuzzy OR).

Because g depends on one feature value at a time, any membership can be tabulated
on a grid of values (`table`), which is how the quantised scans evaluate it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from simdex.engine.errors import SimdexError


class MembershipError(SimdexError, ValueError):
    """Bad membership name, τ or query set."""


class Membership(ABC):
    """Membership function of one query (or one set of queries) over d features."""

    name: str = ""

    def __init__(self, queries: np.ndarray, tau: float = 1.0):
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[0] == 0:
            raise MembershipError(f"queries must be a (m, d) array with m ≥ 1, got shape {queries.shape}")
        if not np.all(np.isfinite(queries)):
            raise MembershipError("queries contain NaN or infinite values")
        if not (tau > 0 and np.isfinite(tau)):
            raise MembershipError(f"tau must be a positive number, got {tau}")
        self.queries = queries  # (m, d)
        self.tau = float(tau)

    @property
    def dim(self) -> int:
        return self.queries.shape[1]

    @abstractmethod
    def __call__(self, z: np.ndarray) -> np.ndarray:
        """g for values z of shape (rows, d) → float32 (rows, d) in [0, 1]. May overwrite nothing."""

    def centres(self) -> np.ndarray:
        """Points (m', d) whose neighbourhoods hold the best matches; the candidate stage searches around them."""
        return self.queries

    def table(self, grid: np.ndarray) -> np.ndarray:
        """g evaluated on a per-feature grid of values: grid (levels, d) → (levels, d)."""
        return self(np.asarray(grid, dtype=np.float32))


class Gaussian(Membership):
    """Eq. 2 after z-scoring: g = exp(−((z − z_q)/τ)²). Exactly one query."""

    name = "gaussian"

    def __init__(self, queries: np.ndarray, tau: float = 1.0):
        super().__init__(queries, tau)
        if self.queries.shape[0] != 1:
            raise MembershipError(
                f"the gaussian membership takes one query, got {self.queries.shape[0]}: "
                "use 'trapezoid' or 'max' for a set of queries"
            )

    def __call__(self, z: np.ndarray) -> np.ndarray:
        g = np.subtract(z, self.queries[0], dtype=np.float32)  # (rows, d)
        g *= np.float32(1.0 / self.tau)
        np.square(g, out=g)
        np.negative(g, out=g)
        return np.exp(g, out=g)


class Trapezoid(Membership):
    """Eq. 3: plateau on [min_Q, max_Q], shoulders Δ = max(τ·(max_Q − min_Q), τ) (the floor is DESIGN §4's)."""

    name = "trapezoid"

    def __init__(self, queries: np.ndarray, tau: float = 1.0):
        super().__init__(queries, tau)
        self.low = self.queries.min(axis=0)  # (d,)
        self.high = self.queries.max(axis=0)
        self.delta = np.maximum(self.tau * (self.high - self.low), self.tau).astype(np.float32)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        # distance outside the plateau, 0 inside it
        outside = np.maximum(self.low - z, 0) + np.maximum(z - self.high, 0)
        outside /= self.delta
        np.subtract(1.0, outside, out=outside)
        return np.maximum(outside, 0, out=outside)

    def centres(self) -> np.ndarray:
        return np.concatenate([self.queries, ((self.low + self.high) / 2)[None, :]])


class Triangle(Membership):
    """Apex at the queries' mean, feet at ±Δ, Δ = max(τ, τ·(max_Q − min_Q))."""

    name = "triangle"

    def __init__(self, queries: np.ndarray, tau: float = 1.0):
        super().__init__(queries, tau)
        self.apex = self.queries.mean(axis=0)
        spread = self.queries.max(axis=0) - self.queries.min(axis=0)
        self.delta = np.maximum(self.tau * spread, self.tau).astype(np.float32)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        g = np.abs(np.subtract(z, self.apex, dtype=np.float32))
        g /= self.delta
        np.subtract(1.0, g, out=g)
        return np.maximum(g, 0, out=g)

    def centres(self) -> np.ndarray:
        return self.apex[None, :] if self.queries.shape[0] > 1 else self.queries


class MaxGaussian(Membership):
    """Per-feature maximum of the queries' Gaussians (fuzzy OR); one query = the Gaussian."""

    name = "max"

    def __call__(self, z: np.ndarray) -> np.ndarray:
        out = None
        for q in self.queries:
            g = Gaussian(q, self.tau)(z)
            out = g if out is None else np.maximum(out, g, out=out)
        return out


MEMBERSHIPS: dict[str, type[Membership]] = {
    cls.name: cls for cls in (Gaussian, Trapezoid, Triangle, MaxGaussian)
}


def make_membership(name: str, queries: np.ndarray, tau: float = 1.0) -> Membership:
    """Create a membership by name.

    Args:
        name: one of ``gaussian``, ``trapezoid``, ``triangle``, ``max``.
        queries: (m, d) or (d,) z-scored query vectors (m = 1 for ``gaussian``).
        tau: width τ > 0 (in units of σ_j = 1).

    Returns:
        a callable `Membership`.

    Raises:
        MembershipError: unknown name, bad τ or bad queries.

    Example:
        >>> g = make_membership("gaussian", np.zeros(3), tau=1.0)
        >>> float(g(np.zeros((1, 3)))[0, 0])
        1.0
    """
    try:
        cls = MEMBERSHIPS[name]
    except KeyError:
        raise MembershipError(f"unknown membership {name!r}; choose one of {', '.join(sorted(MEMBERSHIPS))}") from None
    return cls(queries, tau)
