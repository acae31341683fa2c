"""The engine core on small seeded data, against direct transcriptions of the paper's equations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simdex.engine.candidates import ClippedL2IVF, ExactIndex, build_candidate_index, default_nprobe
from simdex.engine.membership import MembershipError, make_membership
from simdex.engine.omega import ClassStats, OmegaError, OmegaInputs, kmeans_labels, make_omega, pairwise_abs_sum
from simdex.engine.pruning import FeatureStats, Pruning, PruningError, format_table_iii, table_iii_by_layer
from simdex.engine.quantized import LutScanner, UniformCodec
from simdex.engine.scoring import exact_search
from simdex.engine.search import search


def random_catalog(n=600, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(0, 1, (n, d)) + rng.normal(0, 1, (1, d)), 0)  # sparse, ReLU-like
    z = (x - x.mean(0)) / x.std(0)
    omega = rng.random(d) + 0.1
    return z.astype(np.float32), omega / omega.sum()


# ---------------------------------------------------------------- direct transcriptions of eqs. 2-4

def p_gaussian_reference(z, q, omega, tau):
    """Eq. 2 (σ_j = 1 after z-scoring) inside eq. 4 as a weighted mean, one object at a time."""
    return sum(omega[j] * math.exp(-(((z[j] - q[j]) / tau) ** 2)) for j in range(len(q)))


def p_trapezoid_reference(z, queries, omega, tau):
    """Eq. 3 with the Δ floor of DESIGN §4, inside eq. 4."""
    total = 0.0
    for j in range(len(z)):
        a, b = min(q[j] for q in queries), max(q[j] for q in queries)
        delta = max(tau * (b - a), tau)
        if a <= z[j] <= b:
            g = 1.0
        elif a - delta < z[j] < a:
            g = (z[j] - (a - delta)) / delta
        elif b < z[j] < b + delta:
            g = ((b + delta) - z[j]) / delta
        else:
            g = 0.0
        total += omega[j] * g
    return total


@pytest.mark.parametrize("name", ["gaussian", "trapezoid", "triangle", "max"])
def test_p_in_unit_interval_and_self_similarity_is_one(name):
    z, omega = random_catalog()
    m = make_membership(name, z[7], tau=0.7)
    P, hits = exact_search(z, [m], omega, k=len(z))
    assert np.all((P >= 0) & (P <= 1))
    assert hits[0, 0] == 7
    assert P[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_gaussian_search_equals_transcription():
    z, omega = random_catalog(n=300, d=8)
    tau = 0.8
    q = z[11]
    P, hits = search(z, [make_membership("gaussian", q, tau)], omega, k=300)
    ref = np.array([p_gaussian_reference(z[i], q, omega, tau) for i in range(len(z))])
    order = np.lexsort((np.arange(len(z)), -ref))
    np.testing.assert_allclose(P[0], ref[order], atol=1e-5)
    np.testing.assert_allclose(ref[hits[0]], P[0], atol=1e-5)


def test_trapezoid_search_equals_transcription():
    z, omega = random_catalog(n=300, d=8, seed=3)
    tau = 1.3
    queries = z[[4, 40, 90]]
    P, hits = search(z, [make_membership("trapezoid", queries, tau)], omega, k=300)
    ref = np.array([p_trapezoid_reference(z[i], queries, omega, tau) for i in range(len(z))])
    np.testing.assert_allclose(np.sort(P[0])[::-1], np.sort(ref)[::-1], atol=1e-5)
    np.testing.assert_allclose(ref[hits[0]], P[0], atol=1e-5)
    # every query lies on the plateau of every feature: P = 1 for each of them
    assert np.allclose(ref[[4, 40, 90]], 1.0)
    assert {4, 40, 90} <= set(hits[0][P[0] >= 1 - 1e-6])


def test_trapezoid_degenerate_support_uses_tau_floor():
    # a single query (max = min on every feature): without the floor Δ would be 0
    q = np.array([0.0, 1.0], np.float32)
    m = make_membership("trapezoid", q, tau=2.0)
    z = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, -2.0]], np.float32)
    np.testing.assert_allclose(m(z), [[1, 1], [0.5, 0.5], [0, 0], [0, 0]], atol=1e-7)
    # features where all queries agree get the floor, others τ·(max − min)
    m2 = make_membership("trapezoid", np.array([[0.0, 0.0], [0.0, 4.0]]), tau=0.5)
    np.testing.assert_allclose(m2.delta, [0.5, 2.0])
    np.testing.assert_allclose(m2(np.array([[0.25, 5.0]], np.float32)), [[0.5, 0.5]])


def test_max_membership_is_fuzzy_or_of_gaussians():
    z, omega = random_catalog(n=50, d=5)
    m = make_membership("max", z[[1, 2]], tau=1.0)
    g1 = make_membership("gaussian", z[1], 1.0)(z)
    g2 = make_membership("gaussian", z[2], 1.0)(z)
    np.testing.assert_allclose(m(z), np.maximum(g1, g2))


def test_membership_errors():
    with pytest.raises(MembershipError, match="one query"):
        make_membership("gaussian", np.zeros((2, 3)))
    with pytest.raises(MembershipError, match="unknown membership"):
        make_membership("cosine", np.zeros(3))
    with pytest.raises(MembershipError, match="tau"):
        make_membership("gaussian", np.zeros(3), tau=0)


def test_allow_mask_and_missing_hits():
    z, omega = random_catalog(n=40, d=6)
    allow = np.zeros(40, bool)
    allow[[3, 5, 9]] = True
    P, hits = exact_search(z, [make_membership("gaussian", z[0], 1.0)], omega, k=5, allow=allow, block_rows=7)
    assert set(hits[0, :3]) == {3, 5, 9}
    assert list(hits[0, 3:]) == [-1, -1] and list(P[0, 3:]) == [0, 0]


def test_blocked_threaded_scan_equals_single_block():
    z, omega = random_catalog(n=1000, d=10, seed=5)
    ms = [make_membership("gaussian", z[i], 0.9) for i in (1, 2, 3)]
    a = exact_search(z, ms, omega, k=20, block_rows=64, threads=3)
    b = exact_search(z, ms, omega, k=20, block_rows=10_000, threads=1)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


@pytest.mark.parametrize("dim", [None, 6])
def test_ivf_search_with_enough_candidates_equals_exact(dim):
    z, omega = random_catalog(n=2000, d=16, seed=2)
    index = ClippedL2IVF.build(z, omega, nlist=8, nprobe=8, dim=dim)
    assert index.info()["dim"] == (dim or 16)
    for name, rows in [("gaussian", [5]), ("trapezoid", [5, 6]), ("max", [7, 8])]:
        m = make_membership(name, z[rows], 1.0)
        got = search(z, [m], omega, k=10, index=index, n_candidates=2000)
        want = exact_search(z, [m], omega, k=10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    # a filter is applied inside the index as well as in the rerank
    allow = np.arange(2000) % 2 == 1
    m = make_membership("gaussian", z[5], 1.0)
    got = search(z, [m], omega, k=10, index=index, n_candidates=2000, allow=allow)
    assert np.all(got[1] % 2 == 1)
    np.testing.assert_array_equal(got[1], exact_search(z, [m], omega, k=10, allow=allow)[1])


def test_candidate_index_choice_by_size():
    z, omega = random_catalog(n=100, d=4)
    assert isinstance(build_candidate_index(z, omega), ExactIndex)


def test_nprobe_grows_with_the_number_of_lists():
    # 100k objects → 1,024 lists → 32 visited; 1M → 4,096 → 128 (bench_query: recall 0.947 → 0.967)
    assert [default_nprobe(n) for n in (8, 64, 1024, 4096, 16384)] == [8, 32, 32, 128, 512]
    z, omega = random_catalog(n=3000, d=8, seed=2)
    assert ClippedL2IVF.build(z, omega, nlist=16, dim=None).nprobe == 16


def test_quantized_exhaustive_search_returns_exact_top_k():
    z, omega = random_catalog(n=3000, d=12, seed=4)
    codec = UniformCodec(z.min(0), z.max(0))
    codes = codec.encode(z)
    assert np.abs(codec.decode(codes) - z).max() <= codec.step.max() / 2 + 1e-5
    scanner = LutScanner(codes, threads=2)
    for name, rows in [("gaussian", [9]), ("trapezoid", [9, 10, 11])]:
        m = make_membership(name, z[rows], 1.0)
        got = search(z, [m], omega, k=10, exact=True, scanner=scanner, codec=codec)
        want = exact_search(z, [m], omega, k=10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        # the table scan is the sum of per-feature tables
        table = codec.table(m, omega.astype(np.float32))
        scores, ids = scanner.search(table, 5)
        direct = table[np.arange(z.shape[1]), codes[ids]].sum(1)
        np.testing.assert_allclose(scores, direct, rtol=1e-5)


# ---------------------------------------------------------------- Ω

def test_eq5_on_hand_computed_example():
    # class means on 2 features: A = (0, 1), B = (2, 1), C = (4, 4)
    # feature 0: |0-2| + |0-4| + |2-4| = 8; feature 1: 0 + 3 + 3 = 6  → ω = (8/14, 6/14)
    z = np.array([[0, 0], [0, 2], [2, 1], [2, 1], [4, 4]], np.float64)
    labels = np.array(["A", "A", "B", "B", "C"], object)
    stats = ClassStats(2)
    stats.update(z[:3], labels[:3])  # streaming: two batches
    stats.update(z[3:], labels[3:])
    omega = make_omega("clusters").estimate(OmegaInputs(dim=2, class_stats=stats))
    np.testing.assert_allclose(omega, [8 / 14, 6 / 14])
    np.testing.assert_allclose(pairwise_abs_sum(np.array([[0.0], [2], [4]])), [8])


def test_welch_on_hand_computed_example():
    z = np.array([[0.0, 0], [2, 0], [4, 3], [6, 3]])
    labels = np.array([0, 0, 1, 1], object)
    stats = ClassStats(2)
    stats.update(z, labels)
    omega = make_omega("welch").estimate(OmegaInputs(dim=2, class_stats=stats))
    # feature 0: means 1 vs 5, variances 2 and 2, n = 2 → t = 4 / sqrt(1 + 1) = 2√2;
    # feature 1: means 0 vs 3 with zero variance → the undefined t is given no weight
    np.testing.assert_allclose(omega, [1.0, 0.0])
    assert make_omega("svd").estimate(OmegaInputs(dim=2, v1=np.array([0.6, 0.8]))).tolist() == pytest.approx([0.36, 0.64])
    with pytest.raises(OmegaError, match="2 classes"):
        single = ClassStats(2)
        single.update(z, np.zeros(4, object))
        make_omega("clusters").estimate(OmegaInputs(dim=2, class_stats=single))


def test_kmeans_labels_separate_obvious_clusters():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 0.1, (100, 3)), rng.normal(5, 0.1, (100, 3))]).astype(np.float32)
    labels = kmeans_labels(z, n_clusters=2)
    assert len(set(labels[:100])) == 1 and len(set(labels[100:])) == 1 and labels[0] != labels[150]


# ---------------------------------------------------------------- pruning

def test_pruning_on_hand_computed_example():
    # Gram on the active features 0, 1, 3: X = rows (1, 1, 0, 0), (1, 1, 0, 0), (0, 0, 0, 0.1)
    # XᵀX = [[2, 2, 0], [2, 2, 0], [0, 0, 0.01]] → v_1 = (1/√2, 1/√2, 0): loadings 0.5, 0.5, 0
    x = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0.1]], np.float32)
    stats = FeatureStats(4)
    stats.update(x[:2])
    stats.update(x[2:])
    np.testing.assert_allclose(stats.gram, x.astype(np.float64).T @ x)
    assert stats.active.tolist() == [True, True, False, True]
    p = Pruning.from_stats(stats, retain=0.99)
    assert p.kept.tolist() == [0, 1]
    np.testing.assert_allclose(np.abs(p.v1), [2**-0.5, 2**-0.5, 0, 0], atol=1e-9)
    assert p.retained == pytest.approx(1.0)
    assert Pruning.from_stats(stats, retain=0.5).kept.tolist() in ([0], [1])
    # feature 3 has no loading on v_1: even retain = 1 does not keep it
    assert Pruning.from_stats(stats, retain=1.0).kept.tolist() == [0, 1]
    # z-score with population statistics: feature 0 = (1, 1, 0) → mean 2/3, std √2/3
    np.testing.assert_allclose(p.mean, [2 / 3, 2 / 3])
    np.testing.assert_allclose(p.std, [math.sqrt(2) / 3] * 2)
    z = p.normalise(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(p.z_min, z.min(0), atol=1e-6)
    rows = p.table_iii([{"name": "C11", "channels": 2, "offset": 0}, {"name": "C12", "channels": 2, "offset": 2}])
    assert rows == [
        {"layer": "C11", "initial": 2, "active": 2, "kept": 2},
        {"layer": "C12", "initial": 2, "active": 1, "kept": 0},
        {"layer": "total", "initial": 4, "active": 3, "kept": 2},
    ]


def test_pruning_stats_merge_equals_one_pass(tmp_path):
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(size=(50, 6)), 0)
    a, b, whole = FeatureStats(6), FeatureStats(6), FeatureStats(6)
    a.update(x[:20])
    b.update(x[20:])
    whole.update(x)
    a.save(tmp_path / "a.npz")
    merged = FeatureStats.load(tmp_path / "a.npz").merge(b)
    np.testing.assert_allclose(merged.gram, whole.gram)
    assert Pruning.from_stats(merged).kept.tolist() == Pruning.from_stats(whole).kept.tolist()
    with pytest.raises(PruningError, match="empty"):
        Pruning.from_stats(FeatureStats(3))


def test_gather_rows_requests_pages_ahead_and_equals_indexing(tmp_path, monkeypatch):
    """`scoring.gather_rows` (the rerank's read of scattered rows) gives Z[ids] for a memory map, a
    slice of one and a plain array; on the map it asks the kernel for the rows' pages first."""
    import mmap as mmap_module

    from simdex.engine import scoring

    a = np.random.default_rng(0).random((3000, 37)).astype(np.float32)
    np.save(tmp_path / "z.npy", a)
    Z = np.load(tmp_path / "z.npy", mmap_mode="r")
    ids = np.array([0, 5, 1024, 2999])
    calls = []
    real = scoring._will_need
    monkeypatch.setattr(scoring, "_will_need", lambda mm, start, length: calls.append((start, length))
                        or real(mm, start, length))
    np.testing.assert_array_equal(scoring.gather_rows(Z, ids), a[ids])
    row = 37 * 4
    assert len(calls) == len(ids)
    for (start, length), r in zip(calls, ids):
        first = 128 + r * row  # the .npy header, then the rows
        assert start % mmap_module.PAGESIZE == 0 and start <= first and start + length == first + row
    np.testing.assert_array_equal(scoring.gather_rows(Z[1000:], ids[:3]), a[1000:][ids[:3]])
    np.testing.assert_array_equal(scoring.gather_rows(a, ids), a[ids])


def test_table_iii_sums_the_cells_of_a_layer():
    """A grid region's cells (C11@m, C11@00, …) are one row of the printed Table III, in layer order."""
    rows = [{"layer": "C11@m", "initial": 16, "active": 15, "kept": 15},
            {"layer": "C11@00", "initial": 16, "active": 14, "kept": 13},
            {"layer": "C12", "initial": 16, "active": 3, "kept": 2},
            {"layer": "total", "initial": 48, "active": 32, "kept": 30}]
    assert table_iii_by_layer(rows) == [{"layer": "C11", "initial": 32, "active": 29, "kept": 28},
                                        {"layer": "C12", "initial": 16, "active": 3, "kept": 2},
                                        {"layer": "total", "initial": 48, "active": 32, "kept": 30}]
    assert [line.split()[0] for line in format_table_iii(rows).splitlines()] == ["layer", "C11", "C12", "total"]
