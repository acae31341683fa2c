"""The probabilistic similarity P(v_i|v_q) (eq. 4) and the exact scans that rank by it.

P_i = Σ_j ω_j g_ij with ω_j ≥ 0, Σ_j ω_j = 1, read as a weighted mean (DESIGN §4), so
P ∈ [0, 1] and P(q|q) = 1 for the memberships whose peak is 1.

Arrays in, arrays out, faiss style: a search returns ``(P, hits)`` of shape (nq, k),
with hits = −1 and P = 0 where fewer than k objects are allowed.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simdex.engine.membership import Membership

DEFAULT_BLOCK_ROWS = 8192


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def check_omega(omega: np.ndarray, dim: int) -> np.ndarray:
    """Ω as float32 (d,), non-negative and summing to 1 (raises ValueError otherwise)."""
    omega = np.asarray(omega, dtype=np.float64)
    if omega.shape != (dim,):
        raise ValueError(f"omega has shape {omega.shape}, expected ({dim},)")
    if np.any(~np.isfinite(omega)) or np.any(omega < 0) or omega.sum() <= 0:
        raise ValueError("omega must be finite, non-negative and not all zero")
    return (omega / omega.sum()).astype(np.float32)


def fuzzy_scores(z: np.ndarray, membership: Membership, omega: np.ndarray) -> np.ndarray:
    """Eq. 4: P = Σ_j ω_j g_ij for rows z (rows, d) → float32 (rows,)."""
    g = membership(z)  # (rows, d)
    return np.clip(g @ omega, 0.0, 1.0)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, id), by descending score then ascending id, padded with (0, −1)."""
    out_p = np.zeros(k, np.float32)
    out_i = np.full(k, -1, np.int64)
    if len(scores) > k:
        # a partition keeps the cost linear; ties at the boundary are resolved by id below
        keep = np.argpartition(-scores, k - 1)[:k]
        threshold = scores[keep].min()
        keep = np.flatnonzero(scores >= threshold)
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))[:k]
    out_p[: len(order)] = scores[order]
    out_i[: len(order)] = ids[order]
    return out_p, out_i


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.concatenate([a for a, _ in parts])
    i = np.concatenate([b for _, b in parts])
    valid = i >= 0
    return top_k(p[valid], i[valid], k)


def exact_search(
    Z: np.ndarray,
    memberships: Sequence[Membership],
    omega: np.ndarray,
    k: int = 10,
    allow: np.ndarray | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score every row of Z for every query, in float32: the reference ranking.

    The catalog is read in blocks of `block_rows` rows (bounded memory, works on a
    memory map); blocks run on a thread pool (numpy releases the GIL) and each keeps
    its own top-k, merged at the end (as faiss's `knn_ground_truth` does).

    Args:
        Z: (n, d) float32 normalised features (may be a np.memmap).
        memberships: one membership per query.
        omega: (d,) weights summing to 1.
        k: number of results per query.
        allow: optional boolean (n,) mask; False rows are never returned.
        block_rows: rows per block.
        threads: worker threads (default: the CPU count, at most 8).

    Returns:
        (P, hits): float32 and int64 arrays of shape (nq, k).

    Example:
        >>> Z = np.zeros((5, 3), np.float32); from simdex.engine.membership import Gaussian
        >>> exact_search(Z, [Gaussian(Z[0])], np.full(3, 1 / 3), k=2)[1].tolist()
        [[0, 1]]
    """
    n, d = Z.shape
    omega = check_omega(omega, d)
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    if allow is not None and allow.shape != (n,):
        raise ValueError(f"allow mask has shape {allow.shape}, expected ({n},)")

    def run_block(start: int) -> list[tuple[np.ndarray, np.ndarray]]:
        stop = min(start + block_rows, n)
        rows = np.asarray(Z[start:stop], dtype=np.float32)
        ids = np.arange(start, stop, dtype=np.int64)
        if allow is not None:
            keep = allow[start:stop]
            if not keep.all():
                rows, ids = rows[keep], ids[keep]
        return [top_k(fuzzy_scores(rows, m, omega), ids, k) for m in memberships]

    starts = range(0, n, block_rows)
    threads = threads or default_threads()
    if threads == 1 or len(starts) == 1:
        results = [run_block(s) for s in starts]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(run_block, starts))
    P = np.zeros((len(memberships), k), np.float32)
    hits = np.full((len(memberships), k), -1, np.int64)
    for q in range(len(memberships)):
        P[q], hits[q] = _merge([r[q] for r in results], k)
    return P, hits


PREFETCH_ROWS = 65536  # at most this many scattered rows are requested ahead (`gather_rows`)


def _will_need(mm: mmap.mmap, start: int, length: int) -> None:
    mm.madvise(mmap.MADV_WILLNEED, start, length)


def gather_rows(Z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Z[ids] as float32, for sorted row ids. On a memory map the rows' pages are first requested
    all at once (madvise WILLNEED), so the disk reads them in parallel instead of one page fault
    after another: 100 scattered rows of a 10M-row matrix not in the page cache took 32 ms by
    faults and 1.1 ms requested ahead (one measurement, 30 queries each, on this machine's disk;
    benchmarks/bench_10m.py measures whole queries)."""
    mm = getattr(Z, "_mmap", None)
    if mm is not None and 0 < len(ids) <= PREFETCH_ROWS and Z.ndim == 2 and hasattr(mmap, "MADV_WILLNEED"):
        row_bytes = Z.shape[1] * Z.itemsize
        first = Z.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data  # where row 0 lies in the mapping
        if Z.strides == (row_bytes, Z.itemsize) and first >= 0:
            page = mmap.PAGESIZE
            try:
                for r in ids:
                    start = first + int(r) * row_bytes
                    aligned = start - start % page
                    _will_need(mm, aligned, start + row_bytes - aligned)
            except (OSError, ValueError):  # a mapping that refuses it: the page faults will do
                pass
    return np.asarray(Z[ids], dtype=np.float32)


def rerank(
    Z: np.ndarray,
    candidates: np.ndarray,
    memberships: Sequence[Membership],
    omega: np.ndarray,
    k: int = 10,
    allow: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact P for candidate rows only: candidates (nq, m) int64 with −1 padding → (P, hits) (nq, k)."""
    d = Z.shape[1]
    omega = check_omega(omega, d)
    P = np.zeros((len(memberships), k), np.float32)
    hits = np.full((len(memberships), k), -1, np.int64)
    for q, membership in enumerate(memberships):
        ids = np.unique(candidates[q][candidates[q] >= 0])  # sorted: sequential reads of a memory map
        if allow is not None and len(ids):
            ids = ids[allow[ids]]
        if len(ids) == 0:
            continue
        P[q], hits[q] = top_k(fuzzy_scores(gather_rows(Z, ids), membership, omega), ids, k)
    return P, hits
