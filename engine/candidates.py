"""Candidate stage: a FAISS index that proposes the rows an exact fuzzy rerank then scores.

P (eq. 4) saturates: a feature far from the query contributes ≈ 0 whether it is 3σ
or 30σ away, while L2 punishes the 30σ feature quadratically, so a plain L2 index
ranks many fuzzy top-10 objects far down. The transform y = √ω · clip(z, −c, c)
bounds every feature's contribution, the way the Gaussian does, and weighs it as
eq. 4 does; on the benchmark's data (200k × 450) the exact L2 top-500 of y hold
99.8 % of the fuzzy top-10, vs 84 % without the clip. Scanning 450-dimensional
vectors is what costs: IVF-SQ8 over y needed ≈ 17 ms per query (1M objects, 2
cores) for 96 % recall. So y is first reduced by PCA to `dim` (default 64)
dimensions — the top-1000 in that space still hold 99 % of the fuzzy top-10 —
and an IVF-Flat index (k-means coarse quantiser) over the reduced vectors finds
them in about a millisecond; the exact rerank of ~1000 rows costs about as much.

Kinds (`make_candidate_index`):
- ``exact``: no index; `engine.search` scans the whole catalog (small catalogs).
- ``ivf``: PCA + IVF-Flat over y, tuned by `nprobe` and the number of candidates.
- ``ivf4``: ``ivf``'s partition with lists of 4-bit codes scored by P itself
  (engine/fuzzy_ivf.py); built by `engine.build` from the build's 4-bit codes.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from simdex.engine.build_files import BuildFiles

log = logging.getLogger(__name__)

DEFAULT_CLIP = 2.0
DEFAULT_NPROBE = 32  # at least this many lists are visited …
NPROBE_SHARE = 32  # … and at least 1/NPROBE_SHARE of them (1M objects: 128 of 4,096 lists)
DEFAULT_CANDIDATES = 1000
DEFAULT_DIM = 64
# below this many objects the exact scan is fast enough (≈ 50 ms) and needs no index
EXACT_BELOW = 50_000


@contextmanager
def faiss_threads(n: int):
    """Run FAISS with n OpenMP threads in this thread. A single query gains nothing from
    OpenMP's workers and, on a busy machine, loses up to 10 ms waiting for them."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)



def default_nprobe(nlist: int) -> int:
    """IVF lists to visit: at least DEFAULT_NPROBE and at least 1/NPROBE_SHARE of them, never more than nlist."""
    return min(nlist, max(DEFAULT_NPROBE, nlist // NPROBE_SHARE))

class CandidateIndex(ABC):
    kind: str = ""

    @abstractmethod
    def search(self, centres: np.ndarray, n_candidates: int, allow: np.ndarray | None = None) -> np.ndarray:
        """Candidate row ids for query centres (m, d) → int64 (m, n_candidates), −1 padded."""

    @abstractmethod
    def save(self, files: BuildFiles) -> None:
        """Write the index into a build folder (through its `BuildFiles`)."""

    def info(self) -> dict:
        return {"kind": self.kind}

    def with_nprobe(self, nprobe: int) -> CandidateIndex:
        """This index visiting `nprobe` lists (a copy where that matters; indexes without lists are shared)."""
        return self

    @property
    def default_candidates(self) -> int:
        """Rows per query the exact rerank scores when the caller does not say."""
        return DEFAULT_CANDIDATES

    def search_membership(self, membership, omega: np.ndarray, n_candidates: int,
                          allow: np.ndarray | None = None) -> np.ndarray:
        """Candidate row ids (−1 padded, flat) for one membership: `search` around its centres.
        An index that can score by the membership itself (ivf4) ranks by it instead."""
        return self.search(membership.centres(), n_candidates, allow=allow).ravel()


class ExactIndex(CandidateIndex):
    """No candidate stage: every query is answered by the exhaustive scan."""

    kind = "exact"

    def search(self, centres, n_candidates, allow=None):
        raise NotImplementedError("the exact index has no candidate stage; engine.search scans the catalog")

    def save(self, files: BuildFiles) -> None:
        files.write_candidates(self.info())


class ClippedL2IVF(CandidateIndex):
    """IVF-Flat (L2) over the PCA projection of y = √ω · clip(z, −clip, clip)."""

    kind = "ivf"

    def __init__(self, index, omega: np.ndarray, clip: float = DEFAULT_CLIP, nprobe: int = DEFAULT_NPROBE):
        self.index = index
        self.sqrt_omega = np.sqrt(np.asarray(omega, dtype=np.float32))
        self.clip = float(clip)
        self.nprobe = int(nprobe)

    def with_nprobe(self, nprobe: int) -> ClippedL2IVF:
        """The same index (shared FAISS structure) visiting `nprobe` lists; this one is unchanged."""
        if nprobe < 1:
            raise ValueError(f"nprobe must be ≥ 1, got {nprobe}")
        other = copy.copy(self)
        other.nprobe = int(nprobe)
        return other

    def transform(self, z: np.ndarray) -> np.ndarray:
        y = np.clip(np.asarray(z, dtype=np.float32), -self.clip, self.clip)
        y *= self.sqrt_omega
        return y

    @classmethod
    def build(
        cls,
        Z: np.ndarray,
        omega: np.ndarray,
        nlist: int | None = None,
        clip: float = DEFAULT_CLIP,
        nprobe: int | None = None,
        dim: int | None = DEFAULT_DIM,
        train_rows: int | None = None,
        batch_rows: int = 65536,
        seed: int = 1234,
    ) -> ClippedL2IVF:
        """Train the coarse quantiser on a sample of rows, then add every row in batches.

        nlist defaults to ≈ 4·√n (a power of two), trained on 40 rows per list; nprobe to
        max(DEFAULT_NPROBE, nlist / NPROBE_SHARE): a fixed nprobe visits an ever smaller share
        of a growing catalog (benchmarks/bench_query.py: at 1M objects nprobe 32 gave recall@10
        0.947, nprobe 128 0.967 for ≈ 1 ms more); dim = None (or ≥ d) skips the PCA.
        """
        import faiss

        n, d = Z.shape
        nlist = nlist or int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(n)))))
        nlist = max(1, min(nlist, n // 39 or 1))
        nprobe = nprobe or default_nprobe(nlist)
        self = cls(None, omega, clip, nprobe)
        reduced = d if dim is None or dim >= d else int(dim)
        quantizer = faiss.IndexFlatL2(reduced)
        ivf = faiss.IndexIVFFlat(quantizer, reduced, nlist, faiss.METRIC_L2)
        ivf.cp.seed = seed
        index = ivf if reduced == d else faiss.IndexPreTransform(faiss.PCAMatrix(d, reduced), ivf)
        rng = np.random.default_rng(seed)
        m = min(n, max(train_rows or 40 * nlist, 10 * d))
        sample = np.sort(rng.choice(n, m, replace=False))
        index.train(self.transform(Z[sample]))
        for a in range(0, n, batch_rows):
            index.add(self.transform(Z[a : a + batch_rows]))
        self.index = index
        return self

    @classmethod
    def load(cls, files: BuildFiles, omega: np.ndarray, clip: float, nprobe: int) -> ClippedL2IVF:
        """The index `save` wrote, its lists memory-mapped where FAISS allows it."""
        import faiss

        path = str(files.candidates_index_path)
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            index = faiss.read_index(path)
        return cls(index, omega, clip, nprobe)

    @property
    def ivf(self):
        import faiss

        return faiss.extract_index_ivf(self.index)

    def search(self, centres, n_candidates, allow=None):
        import faiss

        centres = np.atleast_2d(centres)
        bits = None
        if allow is not None and not allow.all():
            bits = np.packbits(allow, bitorder="little")  # must outlive the search: the selector points into it
            params = faiss.SearchParametersIVF(nprobe=self.nprobe, sel=faiss.IDSelectorBitmap(len(allow), faiss.swig_ptr(bits)))
        else:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        if isinstance(self.index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        with faiss_threads(1 if len(centres) < 8 else faiss.omp_get_max_threads()):
            _, hits = self.index.search(self.transform(centres), n_candidates, params=params)
        del bits
        return hits

    def info(self) -> dict:
        ivf = self.ivf
        return {"kind": self.kind, "nlist": int(ivf.nlist), "nprobe": self.nprobe, "clip": self.clip,
                "dim": int(ivf.d), "ntotal": int(self.index.ntotal), "lists": "flat"}

    def save(self, files: BuildFiles) -> None:
        import faiss

        faiss.write_index(self.index, str(files.candidates_index_path))
        files.write_candidates(self.info(), omega=self.sqrt_omega**2)


CANDIDATE_KINDS = ("auto", "exact", "ivf", "ivf4")


def resolve_kind(kind: str, n: int) -> str:
    """`auto`: exact below EXACT_BELOW rows, else ivf4."""
    if kind not in CANDIDATE_KINDS:
        raise ValueError(f"unknown candidate index {kind!r}; choose {', '.join(CANDIDATE_KINDS)}")
    return ("exact" if n < EXACT_BELOW else "ivf4") if kind == "auto" else kind


def build_candidate_index(Z: np.ndarray, omega: np.ndarray, kind: str = "auto", codes8=None, codec4=None,
                          **options) -> CandidateIndex:
    """Build the candidate index chosen by catalog size (`resolve_kind`); ivf4 needs the rows' 8-bit
    codes and the 4-bit codec (`engine.fastscan`)."""
    kind = resolve_kind(kind, Z.shape[0])
    if kind == "exact":
        return ExactIndex()
    nprobe4 = options.pop("nprobe4", None)
    coarse = ClippedL2IVF.build(Z, omega, **options)
    if kind == "ivf":
        return coarse
    from simdex.engine.fuzzy_ivf import FuzzyIVF

    if codes8 is None or codec4 is None:
        raise ValueError("an ivf4 index needs the rows' 8-bit codes and the 4-bit codec")
    return FuzzyIVF.build(coarse, codes8, codec4, nprobe=nprobe4)


def load_candidate_index(files: BuildFiles) -> CandidateIndex:
    """Load what `save` wrote; the IVF lists are memory-mapped where FAISS allows it."""
    info, omega = files.read_candidates()
    if info["kind"] == "exact":
        return ExactIndex()
    if info["kind"] == "ivf4":
        from simdex.engine.fuzzy_ivf import FuzzyIVF

        return FuzzyIVF.load(files, info, omega)
    return ClippedL2IVF.load(files, omega, info["clip"], info["nprobe"])
