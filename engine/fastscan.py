"""4-bit codes of the normalised features and FAISS's SIMD fast-scan over them: the first
pass of the exhaustive (`--exact`) search.

P is a weighted sum of per-feature memberships (eq. 4), so on features quantised to 16
levels P is a sum of per-feature tables, T_j[c] = ω_j g(level_j(c)), as for the 8-bit
scan (`engine.quantized`). FAISS's `IndexPQFastScan` sums such tables with SIMD shuffles
over codes packed two per byte when its codebooks are identities (sub-vector j of the
query is T_j, centroid c of sub-quantizer j is the unit vector e_c): 1M × 450 in ≈ 16 ms
on 2 cores, against ≈ 280 ms for the 8-bit table scan (benchmarks/bench_query.py). It
ranks on coarse values (16 levels, and tables rounded to 8 bits inside FAISS), so
`engine.search` rescores its best rows exactly in float32.

The 16 levels of a feature are fitted to its distribution (a weighted Lloyd–Max on the
histogram of its 8-bit codes, one level pinned on its most frequent value), not spread
uniformly: ReLU features are mostly exact zeros with a long right tail, and a uniform
grid would spend most levels on the tail.
The 4-bit codes are derived from the 8-bit ones through a (d, 256) map, so they need no
second pass over z.

Why L2 and not inner product. The sum we want is an inner product (x_j · e_c = T_j[c]),
but FAISS's inner-product fast-scan loses the rows at the top of every table once there
are more than ~257 sub-quantizers (measured: the query itself and its near duplicates
dropped out of the top-k; the 8-bit tables and 16-bit sums leave no room there). The L2
form ‖x_j − e_c‖² = ‖x_j‖² − 2·T_j[c] + 1 ranks the same way, puts the best rows at the
bottom of the 16-bit range where nothing wraps, and only a row at the far end of every
table can wrap round to look near; it is then a wasted candidate the exact rescoring
drops, never a missed one.
"""

from __future__ import annotations

import numpy as np

from simdex.engine.membership import Membership
from simdex.engine.quantized import LEVELS, UniformCodec, scan_shards, set_identity_codebooks

LEVELS4 = 16
CHUNK_ROWS = 1 << 19  # rows per fast-scan file: the unit of parallelism (two for 1M rows)
FIT_ROWS = 200_000  # rows sampled for the histograms the levels are fitted to
COUNT_ROWS = 8192  # rows counted at a time: their int64 copy stays small (70k × 1,113 at once: 620 MB)
LLOYD_ITERATIONS = 30


class FourBitCodec:
    """Per-feature 16 levels (16, d) and the map from each 8-bit code to its nearest level (d, 256)."""

    def __init__(self, levels: np.ndarray, map8: np.ndarray):
        self.levels = np.asarray(levels, dtype=np.float32)
        self.map8 = np.asarray(map8, dtype=np.uint8)
        if self.levels.shape[0] != LEVELS4 or self.map8.shape != (self.levels.shape[1], LEVELS):
            raise ValueError(f"a 4-bit codec needs levels (16, d) and a map (d, 256), got "
                             f"{self.levels.shape} and {self.map8.shape}")

    @property
    def dim(self) -> int:
        return self.levels.shape[1]

    @classmethod
    def fit(cls, codes8: np.ndarray, codec8: UniformCodec, seed: int = 0) -> FourBitCodec:
        """Levels minimising the squared error of z on (a sample of) the 8-bit codes (n, d)."""
        n, d = codes8.shape
        rows = codes8 if n <= FIT_ROWS else codes8[np.sort(np.random.default_rng(seed).choice(n, FIT_ROWS, False))]
        counts = np.zeros(d * LEVELS, np.int64)
        offsets = np.arange(d, dtype=np.int64) * LEVELS
        for a in range(0, len(rows), COUNT_ROWS):  # int64 codes of every row at once: 8 bytes per value
            flat = np.asarray(rows[a : a + COUNT_ROWS], dtype=np.int64) + offsets
            counts += np.bincount(flat.ravel(), minlength=d * LEVELS)
        weight = counts.reshape(d, LEVELS).astype(np.float64)
        values = codec8.grid().T.astype(np.float64)  # (d, 256): the value of each 8-bit code
        levels = _greedy_init(values, weight)  # (d, 16)
        for _ in range(LLOYD_ITERATIONS):
            assign = np.abs(values[:, :, None] - levels[:, None, :]).argmin(axis=2)  # (d, 256)
            onehot = assign[:, :, None] == np.arange(LEVELS4)  # (d, 256, 16)
            mass = (onehot * weight[:, :, None]).sum(axis=1)  # (d, 16)
            total = (onehot * (weight * values)[:, :, None]).sum(axis=1)
            updated = np.where(mass > 0, total / np.maximum(mass, 1e-300), levels)
            levels[:, 1:] = updated[:, 1:]  # level 0 stays on the heaviest code: a ReLU's exact zero is exact
        assign = np.abs(values[:, :, None] - levels[:, None, :]).argmin(axis=2)
        return cls(levels.T, assign.astype(np.uint8))

    def encode8(self, codes8: np.ndarray) -> np.ndarray:
        """4-bit codes (n, d) uint8 in [0, 16) of rows given by their 8-bit codes (n, d)."""
        codes8 = np.asarray(codes8)
        out = np.empty(codes8.shape, np.uint8)
        columns = np.arange(self.dim)
        for a in range(0, len(codes8), COUNT_ROWS):  # the gather's int64 indices, a block of rows at a time
            out[a : a + COUNT_ROWS] = self.map8[columns, codes8[a : a + COUNT_ROWS]]
        return out

    def table(self, membership: Membership, omega: np.ndarray) -> np.ndarray:
        """T (d, 16) with T_j[c] = ω_j g(level_j(c))."""
        return (membership.table(self.levels) * omega).T.astype(np.float32)


def _greedy_init(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Deterministic k-means++-style start for every feature at once: the heaviest code, then
    each time the code of largest weight × squared distance to its nearest level. Quantiles
    would put half the levels on the exact zero of a ReLU feature that is zero half the time."""
    d = values.shape[0]
    rows = np.arange(d)
    first = weight.argmax(axis=1)
    levels = np.empty((d, LEVELS4))
    levels[:, 0] = values[rows, first]
    nearest = (values - levels[:, :1]) ** 2
    for i in range(1, LEVELS4):
        pick = (weight * nearest).argmax(axis=1)  # a feature with < 16 distinct codes repeats a level
        levels[:, i] = values[rows, pick]
        nearest = np.minimum(nearest, (values - levels[:, i : i + 1]) ** 2)
    return levels


def subquantizers(d: int) -> int:
    """Sub-quantizers of a chunk for d features: fast-scan reads them in pairs, so an odd d
    gets one more, whose code is always 0 and whose table is all zeros."""
    return d + d % 2


def pack(codes4: np.ndarray, m: int) -> np.ndarray:
    """Two 4-bit codes per byte, feature 2i in the low nibble (FAISS's PQ layout), padded with
    code 0 to m sub-quantizers: (n, d) → (n, m / 2)."""
    n, d = codes4.shape
    if m > d:
        codes4 = np.concatenate([codes4, np.zeros((n, m - d), np.uint8)], axis=1)
    return (codes4[:, 0::2] | (codes4[:, 1::2] << 4)).astype(np.uint8)


def fastscan_index(packed: np.ndarray, m: int):
    """An `IndexPQFastScan` over packed codes (n, m / 2) whose m codebooks are identities."""
    import faiss

    pq = faiss.IndexPQ(m * LEVELS4, m, 4, faiss.METRIC_L2)  # L2, not inner product: see the module docstring
    set_identity_codebooks(pq.pq, m, LEVELS4)
    pq.is_trained = True
    faiss.copy_array_to_vector(np.ascontiguousarray(packed).ravel(), pq.codes)
    pq.ntotal = int(packed.shape[0])
    return faiss.IndexPQFastScan(pq)


def chunk_indexes(codes8: np.ndarray, codec4: FourBitCodec, rows: int = CHUNK_ROWS):
    """(first row, fast-scan index) for each run of `rows` rows of the 8-bit codes, in order."""
    n, d = codes8.shape
    m = subquantizers(d)
    for a in range(0, n, rows):
        yield a, fastscan_index(pack(codec4.encode8(codes8[a : a + rows]), m), m)


class FastScanner:
    """Top-k rows by a 4-bit table over fast-scan chunks, scanned in parallel."""

    def __init__(self, chunks: list[tuple[int, object]], codec: FourBitCodec, threads: int = 2):
        if not chunks:
            raise ValueError("a fast scanner needs at least one chunk")
        self.chunks, self.codec = chunks, codec
        self.threads = max(1, min(threads, len(chunks)))
        self.n = sum(int(index.ntotal) for _, index in chunks)

    def search(self, table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by Σ_j table[j, code_ij] (approximate: FAISS rounds the table to 8 bits):
        (scores (k',), row ids (k',)), best first."""
        d = table.shape[0]
        x = np.zeros((subquantizers(d), LEVELS4), np.float32)
        x[:d] = table
        # FAISS returns Σ_j ‖x_j − e_c‖² = Σ_j (‖x_j‖² + 1) − 2·Σ_j T_j[c]: the sum is recovered from it
        offset = float((x.astype(np.float64) ** 2).sum() + len(x))
        return scan_shards(self.chunks, x.reshape(1, -1), k, self.threads, to_score=lambda D: (offset - D) / 2)
