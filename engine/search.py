"""Fuzzy search over a normalised catalog matrix: candidates, then the exact rerank.

`search` is the array-level entry point (faiss style: returns (P, hits) of shape (nq, k));
`Searcher` (engine/searcher.py) wraps it around a published build.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simdex.engine.candidates import CandidateIndex, ExactIndex
from simdex.engine.fastscan import FastScanner
from simdex.engine.membership import Membership
from simdex.engine.quantized import LutScanner, UniformCodec
from simdex.engine.scoring import check_omega, exact_search, rerank

# the 8-bit scan keeps this many rows per wanted result for the float32 rescoring
RESCORE_FACTOR = 20
MIN_RESCORE = 200
# the 4-bit fast-scan is coarser: it keeps more (benchmarks/bench_query.py measures the recall)
FAST_RESCORE_FACTOR = 200
FAST_MIN_RESCORE = 2000


def quantized_exhaustive_search(
    Z: np.ndarray,
    scanner: FastScanner | LutScanner,
    codec: UniformCodec | None,
    memberships: Sequence[Membership],
    omega: np.ndarray,
    k: int,
    allow: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scan every row on its codes, rescore the best rows in float32: FAST_RESCORE_FACTOR·k of
    the 4-bit fast-scan (`FastScanner`, which holds its own codec), RESCORE_FACTOR·k of the 8-bit
    table scan (`LutScanner`, with the 8-bit `codec`).

    With a filter that allows under half of the catalog the float32 scan of the
    allowed rows is cheaper than over-fetching, so it is used instead.
    """
    omega = check_omega(omega, Z.shape[1])
    n = Z.shape[0]
    frac = 1.0 if allow is None else float(allow.mean())
    if frac < 0.5:
        return exact_search(Z, memberships, omega, k, allow=allow)
    fast = isinstance(scanner, FastScanner)
    factor, least = (FAST_RESCORE_FACTOR, FAST_MIN_RESCORE) if fast else (RESCORE_FACTOR, MIN_RESCORE)
    depth = min(n, int(max(least, factor * k) / max(frac, 1e-9)))
    table_codec = scanner.codec if fast else codec
    if fast:  # each query's rows rescored as its depth is settled
        ranked = [_deep_enough(Z, scanner, scanner.codec.table(m, omega), m, omega, k, depth, n, allow)
                  for m in memberships]
        P, hits = np.stack([p for p, _ in ranked]), np.stack([h for _, h in ranked])
    else:
        cands = np.full((len(memberships), depth), -1, np.int64)
        for q, membership in enumerate(memberships):
            _, ids = scanner.search(table_codec.table(membership, omega), depth)
            cands[q, : len(ids)] = ids
        P, hits = rerank(Z, cands, memberships, omega, k, allow=allow)
    allowed = n if allow is None else int(allow.sum())
    if np.any((hits < 0).sum(axis=1) > max(0, k - allowed)):
        # the filter removed too many of the scanned rows: fall back to the float scan
        return exact_search(Z, memberships, omega, k, allow=allow)
    return P, hits


def _deep_enough(Z, scanner, table, membership, omega, k, depth, n, allow) -> tuple[np.ndarray, np.ndarray]:
    """(P (k,), hits (k,)) of one query: the fast-scan's best `depth` rows rescored in float32,
    deepened (4× at a time) while a row below the cut could still beat the k-th P found. The
    4-bit score can sit far from P (tiny segments: thousands of rows 0.1 above their P, the true
    neighbours beyond 2,000), so the cut is checked against the k-th P plus the largest
    underestimate seen among the k best."""
    while True:
        scores, ids = scanner.search(table, depth)
        P, hits = (a[0] for a in rerank(Z, ids[None], [membership], omega, k, allow=allow))
        best = hits >= 0
        if depth >= n or len(ids) < depth or best.sum() < k:  # all rows, or a filter: the caller's fallback
            return P, hits
        score_of_best = scores[(ids[None, :] == hits[best][:, None]).argmax(axis=1)]
        under = max(0.0, float((P[best] - score_of_best).max()))
        if float(scores[-1]) + under < float(P[best][-1]):
            return P, hits
        depth = min(n, 4 * depth)


def search(
    Z: np.ndarray,
    memberships: Sequence[Membership],
    omega: np.ndarray,
    k: int = 10,
    *,
    index: CandidateIndex | None = None,
    allow: np.ndarray | None = None,
    exact: bool = False,
    n_candidates: int | None = None,
    scanner: LutScanner | None = None,
    codec: UniformCodec | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the rows of Z for each membership by P (eq. 4).

    Args:
        Z: (n, d) float32 normalised features, usually a memory map.
        memberships: one per query (a set of queries is one trapezoid/max membership).
        omega: (d,) feature weights (normalised here to sum 1).
        k: results per query.
        index: candidate index; None or `ExactIndex` means an exhaustive scan.
        allow: boolean (n,) mask of rows that may be returned (filters, deletions).
        exact: scan the whole catalog instead of using the candidate stage.
        n_candidates: candidates per query centre for the rerank (default: the index's own,
            DEFAULT_CANDIDATES for ivf, fewer for ivf4 whose candidates are ranked by P already).
        scanner, codec: the codes of Z (a 4-bit `FastScanner`, or a `LutScanner` with its 8-bit
            codec); when given, exhaustive scans use them (then rescore in float32) instead of
            the float32 scan.

    Returns:
        (P, hits): float32 (nq, k) in [0, 1] and int64 row ids (nq, k), −1 / 0 where missing.

    Example:
        >>> from simdex.engine.membership import Gaussian
        >>> Z = np.eye(3, dtype=np.float32)
        >>> search(Z, [Gaussian(Z[1])], np.full(3, 1 / 3), k=1)[1].tolist()
        [[1]]
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    omega = check_omega(omega, Z.shape[1])
    if exact or index is None or isinstance(index, ExactIndex):
        if scanner is not None and (codec is not None or isinstance(scanner, FastScanner)):
            return quantized_exhaustive_search(Z, scanner, codec, memberships, omega, k, allow)
        return exact_search(Z, memberships, omega, k, allow=allow)
    if allow is not None and allow.mean() < 0.02:
        # a very selective filter leaves IVF lists nearly empty: scoring the few allowed rows is cheaper
        return exact_search(Z, memberships, omega, k, allow=allow)
    width = max(index.default_candidates if n_candidates is None else n_candidates, k)
    cands = [index.search_membership(membership, omega, width, allow=allow) for membership in memberships]
    size = max(len(c) for c in cands)
    C = np.full((len(cands), size), -1, np.int64)
    for q, c in enumerate(cands):
        C[q, : len(c)] = c
    return rerank(Z, C, memberships, omega, k, allow=allow)
