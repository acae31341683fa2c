"""The 4-bit fast-scan first pass of the exhaustive search (engine/fastscan.py)."""

import numpy as np
import pytest
from synth_catalog import append_objects, class_objects, new_catalog

from simdex.engine import searcher as searcher_module
from simdex.engine.build import BuildConfig, build
from simdex.engine.fastscan import FastScanner, FourBitCodec, chunk_indexes, fastscan_index, pack
from simdex.engine.membership import make_membership
from simdex.engine.quantized import LutScanner, UniformCodec
from simdex.engine.scoring import exact_search
from simdex.engine.search import search
from simdex.engine.searcher import Searcher, load_scanner


def _clustered(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (40, d))
    x = np.maximum(centres[rng.integers(0, 40, n)] + rng.normal(0, 0.8, (n, d)) - 0.5, 0)
    x *= np.exp(rng.normal(0, 0.5, (n, d)))  # sparse, skewed, clustered: ReLU-like
    z = ((x - x.mean(0)) / (x.std(0) + 1e-9)).astype(np.float32)
    omega = rng.random(d) + 0.1
    return z, (omega / omega.sum()).astype(np.float32)


@pytest.mark.parametrize("d", [301, 40])  # more sub-quantizers than FAISS's inner-product scan survives; few
def test_fast_scan_sums_the_tables_and_finds_the_row_at_the_top_of_every_table(d):
    rng = np.random.default_rng(d)
    codes = rng.integers(0, 16, (3000, d), dtype=np.uint8)
    codes[17] = 15  # the query itself: the best entry of every table
    table = rng.random((d, 16), dtype=np.float32)
    table[:, 15] = 1.0
    codec = FourBitCodec(np.zeros((16, d)), np.zeros((d, 256), np.uint8))
    m = d + d % 2
    scanner = FastScanner([(0, fastscan_index(pack(codes[:1600], m), m)),
                           (1600, fastscan_index(pack(codes[1600:], m), m))], codec)
    scores, ids = scanner.search(table, 50)
    direct = table[np.arange(d), codes].sum(1)
    assert ids[0] == 17
    np.testing.assert_allclose(scores, direct[ids], rtol=2e-3)  # FAISS rounds the table to 8 bits
    want = np.argsort(-direct)[:50]
    assert len(set(ids) & set(want)) >= 45  # the same top-50 but for near ties under that rounding


def test_four_bit_levels_follow_the_distribution_of_a_sparse_feature():
    z, _ = _clustered(20000, 6)
    codec8 = UniformCodec(z.min(0), z.max(0))
    c4 = FourBitCodec.fit(codec8.encode(z), codec8)
    assert c4.levels.shape == (16, 6) and c4.map8.shape == (6, 256)
    approx = c4.levels[c4.encode8(codec8.encode(z)), np.arange(6)]
    uniform = codec8.lo + np.rint((z - codec8.lo) / ((z.max(0) - codec8.lo) / 15)) * ((z.max(0) - codec8.lo) / 15)
    assert np.mean((approx - z) ** 2) < 0.5 * np.mean((uniform - z) ** 2)  # fitted levels beat a uniform grid
    assert np.all(np.isclose(c4.levels, z.min(0)).any(axis=0))  # the exact zero of the ReLU is a level


def test_exhaustive_search_on_four_bit_codes_returns_the_exact_top_k():
    z, omega = _clustered(30000, 120, seed=3)
    codec8 = UniformCodec(z.min(0), z.max(0))
    codes8 = codec8.encode(z)
    c4 = FourBitCodec.fit(codes8, codec8)
    scanner = FastScanner(list(chunk_indexes(codes8, c4, rows=12000)), c4, threads=2)
    assert scanner.n == 30000 and len(scanner.chunks) == 3
    for name, rows in [("gaussian", [5]), ("gaussian", [29999]), ("trapezoid", [7, 8, 9])]:
        m = make_membership(name, z[rows], 1.0)
        got = search(z, [m], omega, k=10, exact=True, scanner=scanner, codec=None)
        want = exact_search(z, [m], omega, k=10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    allow = np.zeros(30000, bool)
    allow[::2] = True  # a filter: only allowed rows come back
    m = make_membership("gaussian", z[[4]], 1.0)
    got = search(z, [m], omega, k=10, exact=True, scanner=scanner, allow=allow)
    want = exact_search(z, [m], omega, k=10, allow=allow)
    np.testing.assert_array_equal(got[1], want[1])


def test_a_build_writes_four_bit_codes_and_exact_queries_scan_them(tmp_path, monkeypatch):
    cat = new_catalog(tmp_path / "cat", [("a", 24), ("b", 21)])
    x, labels = class_objects(3000, seed=1, classes=["p", "q", "r"], num_features=45)
    append_objects(cat, x, labels, "job1")
    build(cat, BuildConfig(index="exact"))
    monkeypatch.setattr(searcher_module, "QUANTIZED_SCAN_ABOVE", 0)
    s = Searcher.open(tmp_path / "cat")
    assert isinstance(s.scanner, FastScanner) and s.scanner.n == 3000
    for row in (0, 1234, 2999):
        m = make_membership("gaussian", np.asarray(s.Z[row]), s.tau)
        got = search(s.Z, [m], s.omega, k=10, exact=True, scanner=s.scanner)
        want = exact_search(s.Z, [m], s.omega, k=10)
        np.testing.assert_array_equal(got[1], want[1])
    # a build made before the 4-bit codes: the 8-bit table scan answers instead
    (s.files.folder / "codec4.npz").unlink()
    assert isinstance(load_scanner(s.files, threads=2), LutScanner)


def test_exhaustive_scan_deepens_when_the_codes_overestimate_rows():
    """Thousands of rows the 4-bit pass scores above their P (tiny segments of real catalogs): the
    true top-k below the first 2,000 are still found, the scan deepened until no row under its
    cut can beat the k-th P."""
    from types import SimpleNamespace

    from simdex.engine.search import FAST_MIN_RESCORE, quantized_exhaustive_search

    rng = np.random.default_rng(0)
    n, d = 12_000, 8
    Z = rng.normal(0, 1, (n, d)).astype(np.float32)
    omega = np.full(d, 1.0 / d, np.float32)
    query = make_membership("gaussian", Z[0], 1.0)
    _, truth = exact_search(Z, [query], omega, 10)
    true_p = (query(Z) * omega).sum(axis=1)
    decoys = np.setdiff1d(np.argsort(-true_p)[500:], truth[0])[: 3 * FAST_MIN_RESCORE]

    class Overestimating(FastScanner):  # scores the decoys above every true neighbour
        def __init__(self):
            self.codec = SimpleNamespace(table=lambda membership, omega: None)

        def search(self, table, k):
            score = true_p.astype(np.float64).copy()
            score[decoys] = 2.0 - np.arange(len(decoys)) * 1e-6
            order = np.argsort(-score, kind="stable")[:k]
            return score[order], order

    _, hits = quantized_exhaustive_search(Z, Overestimating(), None, [query], omega, 10)
    assert set(hits[0]) == set(truth[0])
