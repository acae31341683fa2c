"""Candidate stage ivf4 (engine/fuzzy_ivf.py): ivf's partition, lists of 4-bit codes scored by P."""

import numpy as np
from synth_catalog import append_objects, class_objects, new_catalog
from test_fastscan import _clustered

from simdex.engine.build import BuildConfig, build
from simdex.engine.candidates import ClippedL2IVF, load_candidate_index, resolve_kind
from simdex.engine.fastscan import FourBitCodec
from simdex.engine.fuzzy_ivf import FuzzyIVF
from simdex.engine.membership import make_membership
from simdex.engine.quantized import UniformCodec
from simdex.engine.scoring import exact_search
from simdex.engine.search import search
from simdex.engine.searcher import Searcher


def _recall(got, want):
    return np.mean([len(set(g[g >= 0]) & set(w[w >= 0])) / max(1, (w >= 0).sum()) for g, w in zip(got, want)])


def test_ivf4_finds_the_exact_top_k_with_few_reranked_rows():
    z, omega = _clustered(20000, 96, seed=5)
    codec8 = UniformCodec(z.min(0), z.max(0))
    codes8 = codec8.encode(z)
    coarse = ClippedL2IVF.build(z, omega, nlist=128, nprobe=8)
    index = FuzzyIVF.build(coarse, codes8, FourBitCodec.fit(codes8, codec8), nprobe=32)
    assert index.info()["kind"] == "ivf4" and index.default_candidates == 100
    assert index.lists.ntotal == 20000
    rows = np.random.default_rng(0).choice(20000, 30, replace=False)
    ms = [make_membership("gaussian", z[r], 1.0) for r in rows]
    _, want = exact_search(z, ms, omega, 10)
    got = np.stack([search(z, [m], omega, 10, index=index)[1][0] for m in ms])
    fewer = np.stack([search(z, [m], omega, 10, index=coarse, n_candidates=100)[1][0] for m in ms])
    assert _recall(got, want) >= 0.97
    assert _recall(got, want) > _recall(fewer, want)  # as many rows ranked by L2 in PCA space hold less
    assert all(r in g for r, g in zip(rows, got))  # every query finds itself
    # a set of queries probes the lists of every centre
    trap = make_membership("trapezoid", z[rows[:3]], 1.0)
    _, want_set = exact_search(z, [trap], omega, 10)
    assert _recall(search(z, [trap], omega, 10, index=index)[1], want_set) >= 0.8
    # a filter: only allowed rows, over-fetched by its selectivity
    allow = np.zeros(20000, bool)
    allow[::3] = True
    P, hits = search(z, [ms[0]], omega, 10, index=index, allow=allow)
    assert np.all(allow[hits[0]]) and (hits[0] >= 0).all()
    _, want_f = exact_search(z, [ms[0]], omega, 10, allow=allow)
    assert _recall(hits, want_f) >= 0.8


def test_auto_is_ivf4_from_50k_objects_and_a_build_saves_and_loads_it(tmp_path):
    assert resolve_kind("auto", 49_999) == "exact" and resolve_kind("auto", 50_000) == "ivf4"
    cat = new_catalog(tmp_path / "cat", [("a", 24), ("b", 21)])
    x, labels = class_objects(4000, seed=2, classes=["p", "q", "r", "s"], num_features=45)
    append_objects(cat, x, labels, "job1")
    result = build(cat, BuildConfig(index="ivf4", recall_queries=40))
    assert result.info["candidates"]["kind"] == "ivf4"
    assert result.info["recall"]["recall_at_10_mean"] >= 0.95
    s = Searcher.open(tmp_path / "cat")
    assert isinstance(s.index, FuzzyIVF)
    assert isinstance(load_candidate_index(s.files), FuzzyIVF)
    table = s.search(ids=[int(s.object_ids[7])], k=5)
    assert int(table.column("object_id")[0].as_py()) == int(s.object_ids[7])
    wider = s.search(ids=[int(s.object_ids[7])], k=5, nprobe=4)  # --nprobe overrides the lists probed
    assert wider.num_rows == 5


def test_concurrent_queries_with_different_list_counts_answer_as_alone():
    """`simdex serve` answers from threads; a query's list count must not leak into another's."""
    from concurrent.futures import ThreadPoolExecutor

    z, omega = _clustered(8000, 64, seed=9)
    codec8 = UniformCodec(z.min(0), z.max(0))
    codes8 = codec8.encode(z)
    index = FuzzyIVF.build(ClippedL2IVF.build(z, omega, nlist=64), codes8, FourBitCodec.fit(codes8, codec8), nprobe=8)
    jobs = [(index.with_nprobe(p), make_membership(kind, z[rows], 1.0))
            for p, kind, rows in [(2, "gaussian", [1]), (40, "gaussian", [2]), (8, "trapezoid", [3, 4, 5]),
                                  (64, "gaussian", [6])] * 6]
    alone = [ix.search_membership(m, omega, 30) for ix, m in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: job[0].search_membership(job[1], omega, 30), jobs))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
