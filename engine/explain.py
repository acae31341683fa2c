"""Why an answer has its P: the part of P each layer of φ contributes (the paper's Fig. 4, per answer).

P(v_i|v_q) = Σ_j ω_j g_ij (eq. 4) is a sum over the kept features, and every kept
feature is one channel of one layer of φ, so P splits exactly into per-layer parts
that add up to P: a result that matches the query in the early layers (edges,
texture) and one that matches in the late layers (shape of the segment) can have the
same P for different reasons.
"""

from __future__ import annotations

import numpy as np

from simdex.engine.membership import Membership


def layer_of_features(kept: np.ndarray, phi: list[dict]) -> np.ndarray:
    """Index into φ of every kept feature (int64 (d,)); φ's entries carry their `offset` in the raw vector."""
    offsets = np.array([p["offset"] for p in phi])
    return np.searchsorted(offsets, np.asarray(kept), side="right") - 1


def layer_contributions(z: np.ndarray, membership: Membership, omega: np.ndarray, layer: np.ndarray,
                        n_layers: int) -> np.ndarray:
    """Per-layer parts of P for the rows z (m, d): float64 (m, n_layers), each row summing to its P.

    Args:
        z: normalised kept features of the answers.
        membership: the query's fuzzy set (the same one that ranked them).
        omega: (d,) weights summing to 1.
        layer: (d,) layer index of each kept feature (`layer_of_features`).
    """
    parts = membership(np.asarray(z, np.float32)).astype(np.float64) * np.asarray(omega, np.float64)  # (m, d)
    out = np.zeros((parts.shape[0], n_layers))
    np.add.at(out, (slice(None), layer), parts)
    return out
