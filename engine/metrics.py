"""Ranking quality with labels: average precision and precision@k of one ranking.

Used by `simdex eval` (simdex/evaluate.py) and by the build's validation of learned Ω
(engine/omega_learned.py), so both measure the same thing.
"""

from __future__ import annotations

import numpy as np


def rank_metrics(scores: np.ndarray, relevant: np.ndarray, ks=(1, 10, 100)) -> dict:
    """AP and precision@k of one ranking: scores (n,), higher first; relevant (n,) bool.

    AP is the mean of the precision at the rank of each relevant item; ties keep gallery order.

    Example:
        >>> rank_metrics(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), ks=(1,))
        {'ap': 0.8333333333333333, 'p@1': 1.0}
    """
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.flatnonzero(rel)
    ap = float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1))) if len(hits) else 0.0
    return {"ap": ap, **{f"p@{k}": float(rel[:k].mean()) for k in ks}}
