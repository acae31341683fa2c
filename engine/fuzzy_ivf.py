"""Candidate stage `ivf4`: an IVF whose lists hold the rows' 4-bit codes, scored by P itself.

The `ivf` stage (engine/candidates.py) ranks the rows of the probed lists by L2 in a
64-dimensional PCA of √ω·clip(z), a stand-in for P; its top-1000 miss a few of P's top-10
(recall@10 0.967 at 1M objects, benchmarks/bench_query.py), and more candidates cost a
float32 rerank each. But the lists themselves are not the problem: with 256 of 4,096
lists probed, every one of P's top-10 lies in them (measured on the same data). So
`ivf4` keeps `ivf`'s coarse partition (the same PCA and k-means centroids decide which
lists a query probes) and stores in each list the rows' 4-bit codes (engine/fastscan.py),
as a FAISS `IndexIVFPQFastScan` with identity codebooks: every row of the probed lists
is scored by P's own 4-bit tables in SIMD, and only the best few hundred are reranked
exactly in float32.

The coarse assignment is ours, not FAISS's (`search_preassigned`): the lists' FAISS
index works in the 16·d-dimensional space of tables, where no centroid means anything.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from simdex.engine.candidates import CandidateIndex, ClippedL2IVF, faiss_threads
from simdex.engine.fastscan import LEVELS4, FourBitCodec, pack, subquantizers
from simdex.engine.membership import Membership
from simdex.engine.quantized import set_identity_codebooks

if TYPE_CHECKING:
    from simdex.engine.build_files import BuildFiles

# lists probed: 9/256 of them, at least DEFAULT_NPROBE4 (1M objects: 144 of 4,096; bench_query's
# sweep: recall@10 0.996 / 0.998 / 0.998 (worst 0.9 / 0.8 / 0.9) on skewed, dense and real features,
# where 3/64 (192 lists) gave 0.998 / 0.998 / 0.999 and scans a third more rows: the scan is 59 % of
# an ivf4 query (benchmarks/results/profile_ivf4.md); 0.87-0.95x the time in one interleaved run; the
# fewest lists that keep recall ≥ 0.99 with the worst query ≥ 0.8 on all three data sets), at most
# MAX_NPROBE4: the lists grow with the catalog (≈ 610 rows at 10M), so a share of them scans ever more
# rows (bench_10m: at 10M, 768 of 16,384 lists gave recall 1.000 at 20 ms, 256 gave 0.996 at 9 ms)
NPROBE_NUM4, NPROBE_DEN4 = 9, 256
DEFAULT_NPROBE4, MAX_NPROBE4 = 32, 256
DEFAULT_DEPTH = 100  # rows of the probed lists reranked in float32 (bench_query: recall@10 1.000 at 1M)


def default_nprobe4(nlist: int) -> int:
    return min(nlist, MAX_NPROBE4, max(DEFAULT_NPROBE4, nlist * NPROBE_NUM4 // NPROBE_DEN4))


def _identity_ivf(nlist: int, m: int):
    import faiss

    quantizer = faiss.IndexFlatL2(m * LEVELS4)  # never searched: assignments come from the coarse index
    index = faiss.IndexIVFPQ(quantizer, m * LEVELS4, nlist, m, 4, faiss.METRIC_L2)
    index.by_residual = False
    set_identity_codebooks(index.pq, m, LEVELS4)
    index.is_trained = True
    return index, quantizer


class FuzzyIVF(CandidateIndex):
    """`ivf`'s coarse partition, lists of 4-bit codes scored by P's tables (module docstring)."""

    kind = "ivf4"

    def __init__(self, coarse: ClippedL2IVF, lists, codec: FourBitCodec, nprobe: int | None = None):
        self.coarse, self.lists, self.codec = coarse, lists, codec
        self.nprobe = int(nprobe or default_nprobe4(int(coarse.ivf.nlist)))

    @classmethod
    def build(cls, coarse: ClippedL2IVF, codes8: np.ndarray, codec: FourBitCodec,
              nprobe: int | None = None) -> FuzzyIVF:
        """Lists of the coarse IVF's rows (its own assignment), each row as its 4-bit codes."""
        import faiss

        ivf = coarse.ivf
        m = subquantizers(codes8.shape[1])
        index, quantizer = _identity_ivf(int(ivf.nlist), m)
        for lst in range(int(ivf.nlist)):
            size = int(ivf.invlists.list_size(lst))
            if size == 0:
                continue
            # a sorted copy we own: rows in order, so the 8-bit codes are read sequentially
            ids = np.sort(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).astype(np.int64))
            codes = pack(codec.encode8(codes8[ids]), m)
            index.invlists.add_entries(lst, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        index.ntotal = int(ivf.ntotal)
        lists = faiss.IndexIVFPQFastScan(index)
        del index, quantizer
        return cls(coarse, lists, codec, nprobe)

    @property
    def default_candidates(self) -> int:
        return DEFAULT_DEPTH

    def with_nprobe(self, nprobe: int) -> FuzzyIVF:
        if nprobe < 1:
            raise ValueError(f"nprobe must be ≥ 1, got {nprobe}")
        other = copy.copy(self)
        other.nprobe = int(nprobe)
        return other

    def _coarse_vectors(self, centres: np.ndarray) -> np.ndarray:
        import faiss

        y = self.coarse.transform(np.atleast_2d(centres))
        index = self.coarse.index
        if isinstance(index, faiss.IndexPreTransform):
            y = index.chain.at(0).apply_py(np.ascontiguousarray(y))
        return np.ascontiguousarray(y, dtype=np.float32)

    def search(self, centres, n_candidates, allow=None):
        """Without a membership (no tables): the coarse `ivf` search."""
        return self.coarse.search(centres, n_candidates, allow)

    def search_membership(self, membership: Membership, omega: np.ndarray, n_candidates: int,
                          allow: np.ndarray | None = None) -> np.ndarray:
        """The n_candidates rows (int64, −1 padded) of the lists probed around the membership's
        centres with the highest 4-bit P; a filter (`allow`) over-fetches by its selectivity."""
        ivf = self.coarse.ivf
        nprobe = min(self.nprobe, int(ivf.nlist))
        with faiss_threads(1):
            dis, probe = ivf.quantizer.search(self._coarse_vectors(membership.centres()), nprobe)
        if probe.shape[0] > 1:  # a set of queries: the union of every centre's lists, nearest first
            order = np.argsort(dis.ravel(), kind="stable")
            flat = probe.ravel()[order]
            _, first = np.unique(flat, return_index=True)
            keep = flat[np.sort(first)]
            keep = keep[keep >= 0]
            dis = np.zeros((1, len(keep)), np.float32)
            probe = keep[None].astype(np.int64)
        frac = 1.0 if allow is None else max(float(allow.mean()), 1e-6)
        depth = int(min(ivf.ntotal, max(1, n_candidates / frac)))
        d = self.codec.dim
        x = np.zeros((subquantizers(d), LEVELS4), np.float32)
        x[:d] = self.codec.table(membership, omega)
        hits = self._scan_lists(x.reshape(1, -1), depth, probe, dis)
        if allow is not None:
            ok = hits >= 0
            ok[ok] = allow[hits[ok]]
            hits = hits[ok]
        out = np.full(n_candidates, -1, np.int64)
        out[: min(len(hits), n_candidates)] = hits[:n_candidates]
        return out

    def _scan_lists(self, x: np.ndarray, k: int, probe: np.ndarray, dis: np.ndarray) -> np.ndarray:
        """The k best rows (−1 padded) of the lists `probe` (1, p) for the table x (1, 16·m).

        The list count goes in per call (SearchParametersIVF), never into the shared index:
        FAISS's Python `search_preassigned` takes it from `index.nprobe`, which concurrent
        queries of `simdex serve` (and the copies `with_nprobe` makes) would change under
        one another, so this calls the C++ method, which takes parameters."""
        import faiss

        probe = np.ascontiguousarray(probe, dtype=np.int64)
        dis = np.ascontiguousarray(dis, dtype=np.float32)
        distances, labels = np.empty((1, k), np.float32), np.empty((1, k), np.int64)
        params = faiss.SearchParametersIVF(nprobe=int(probe.shape[1]))
        with faiss_threads(1):
            self.lists.search_preassigned_c(1, faiss.swig_ptr(x), k, faiss.swig_ptr(probe), faiss.swig_ptr(dis),
                                            faiss.swig_ptr(distances), faiss.swig_ptr(labels), False, params)
        return labels[0]

    def info(self) -> dict:
        info = self.coarse.info()
        info.update({"kind": self.kind, "nprobe": self.nprobe, "lists": "4-bit fast-scan of P's tables",
                     "coarse_nprobe": self.coarse.nprobe})
        return info

    def save(self, files: BuildFiles) -> None:
        import faiss

        faiss.write_index(self.coarse.index, str(files.candidates_index_path))
        faiss.write_index(self.lists, str(files.candidates_lists_path))
        files.write_candidates(self.info(), omega=self.coarse.sqrt_omega**2)

    @classmethod
    def load(cls, files: BuildFiles, info: dict, omega: np.ndarray) -> FuzzyIVF:
        import faiss

        coarse = ClippedL2IVF.load(files, omega, info["clip"], info.get("coarse_nprobe", info["nprobe"]))
        codec = files.read_codec4()  # only the codec: the exact scan's chunks are not needed here
        if codec is None:
            raise FileNotFoundError(f"{files.folder}: an ivf4 build without its 4-bit codec")
        lists = faiss.read_index(str(files.candidates_lists_path))
        return cls(coarse, lists, codec, info["nprobe"])
