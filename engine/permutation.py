"""Permutation-invariant (semantic) similarity after Wald et al., "Decoupling Semantic Similarity from
Spatial Alignment" (DESIGN §7).

A response is a set of n spatial feature vectors (n positions × C channels: the cells of an
object's window at one layer, or of a whole image). The usual, spatio-semantic similarity
is Pearson's r of the two flattened responses, which compares position p with position p.
The semantic similarity is r after the best one-to-one matching of B's positions to A's:

    r_sem(A, B) = max over permutations π of r(A, B_π)

Pearson's r only needs the global means and norms of A and B, which no permutation changes,
so the best π maximises Σ_p <a_p − μ_A, b_π(p) − μ_B>: a linear assignment problem over the
n×n matrix of inner products (scipy's `linear_sum_assignment`, the Hungarian method's
successor, O(n³)). For large sets `greedy` takes the best remaining pair first (in vectorised rounds);
`benchmarks/bench_permutation.py` measures how close it gets to the optimum.

Content in another arrangement (a shifted, rotated or re-ordered object) keeps its semantic
similarity; only the spatio-semantic one drops. Numpy (and scipy) only.

Example:
    >>> a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    >>> round(semantic_similarity(a, a[[2, 0, 1]]), 6), round(spatial_similarity(a, a[[2, 0, 1]]), 3)
    (1.0, -0.5)
"""

from __future__ import annotations

import numpy as np

MATCHERS = ("optimal", "greedy")


def _centred(x: np.ndarray) -> tuple[np.ndarray, float]:
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    return x, float(np.sqrt((x * x).sum()))


def spatial_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two responses (n, C) compared position by position (spatio-semantic); 0 if either is constant."""
    a, na = _centred(a)
    b, nb = _centred(b)
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else 0.0


def greedy_assignment(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An approximate maximum-weight matching of rows to columns: the greedy matching (the highest
    remaining score whose row and column are both free, again and again). (n, m) → (rows, cols) of
    min(n, m) pairs, sorted by row.

    Taken in rounds rather than pair by pair: in each round every free row and column picks its best
    free partner and the mutual picks are matched. A mutual pick outweighs every pair it blocks
    (a locally dominant edge), and with distinct scores adding locally dominant edges until none is
    left yields exactly the greedy matching (Preis, 1999), in a few vectorised rounds instead of
    a Python loop over n² sorted scores. Each round matches at least the largest remaining score
    (the first, by row then column, on ties), so it ends.
    """
    score = np.asarray(score, np.float64)
    n, m = score.shape
    free_r, free_c = np.arange(n), np.arange(m)
    rows, cols = [], []
    while len(free_r) and len(free_c):
        sub = score[np.ix_(free_r, free_c)]  # (free rows, free columns)
        best_c = sub.argmax(axis=1)
        mutual = np.flatnonzero(sub.argmax(axis=0)[best_c] == np.arange(len(free_r)))
        rows.append(free_r[mutual])
        cols.append(free_c[best_c[mutual]])
        free_r = np.delete(free_r, mutual)
        free_c = np.delete(free_c, best_c[mutual])
    rows, cols = np.concatenate(rows or [np.zeros(0, np.int64)]), np.concatenate(cols or [np.zeros(0, np.int64)])
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def best_matching(a: np.ndarray, b: np.ndarray, matcher: str = "optimal") -> np.ndarray:
    """The permutation π (n,) of B's positions that maximises r(A, B_π): position p of A goes with π[p] of B."""
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}")
    a, _ = _centred(a)
    b, _ = _centred(b)
    if a.shape != b.shape:
        raise ValueError(f"responses must have the same shape (positions, channels), got {a.shape} and {b.shape}")
    score = a @ b.T  # (n, n) inner products of centred position vectors
    if matcher == "optimal":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(score, maximize=True)
    else:
        rows, cols = greedy_assignment(score)
    perm = np.empty(len(a), np.int64)
    perm[rows] = cols
    return perm


def semantic_similarity(a: np.ndarray, b: np.ndarray, matcher: str = "optimal") -> float:
    """Pearson's r of A and B after the best matching of B's positions to A's (Wald et al.).

    Args:
        a, b: responses (n, C): n spatial positions (or cells), C channels each.
        matcher: 'optimal' (linear assignment) or 'greedy' (approximate, faster for large n).
    Returns:
        r in [−1, 1], ≥ `spatial_similarity(a, b)` for 'optimal'; unchanged when either input's
        positions are permuted.
    """
    return spatial_similarity(a, np.asarray(b)[best_matching(a, b, matcher)])


def rsm(responses: np.ndarray, invariant: bool, matcher: str = "optimal") -> np.ndarray:
    """The representational similarity matrix of m responses (m, n, C): spatio-semantic (`invariant`
    False) or semantic (True). Symmetric (m, m) float64 with 1 on the diagonal."""
    m = len(responses)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            s = (semantic_similarity(responses[i], responses[j], matcher) if invariant
                 else spatial_similarity(responses[i], responses[j]))
            out[i, j] = out[j, i] = s
    return out
