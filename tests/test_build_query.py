"""`simdex build` / `query` / `delete` on small synthetic catalogs written through the Catalog API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, class_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, BuildError, build, format_build_summary
from simdex.engine.build_files import BuildFiles
from simdex.engine.catalog import Catalog
from simdex.engine.membership import make_membership
from simdex.engine.pruning import FeatureStats
from simdex.engine.scoring import exact_search
from simdex.engine.searcher import Searcher, SearchError

LAYERS = [("C11", 6, 1), ("C12", 6, 1), ("C21", 8, 2)]
N = 20
CLASSES = ["boot", "sandal", "bag"]


def synthetic_objects(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Sparse ReLU features with class structure; features 12-13 are never active."""
    return class_objects(n, seed, CLASSES, N, centres_seed=99, dead=(12, 13))


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    cat = new_catalog(tmp_path / "cat", LAYERS)
    x, labels = synthetic_objects(300, seed=1)
    append_objects(cat, x[:200], labels[:200], "a")
    append_objects(cat, x[200:], labels[200:], "b", split="test")
    return cat


def all_features(cat: Catalog) -> tuple[np.ndarray, np.ndarray]:
    parts = list(cat.iter_features())
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_build_writes_normalised_matrix_table_iii_and_omega(catalog):
    result = build(catalog, BuildConfig(retain=0.99, omega="clusters"))
    info = result.info
    ids, x = all_features(catalog)
    files = BuildFiles(result.path)
    kept = files.read_pruning().kept
    assert not set(kept) & {12, 13}
    z = files.z()
    np.testing.assert_allclose(z, (x[:, kept] - x[:, kept].mean(0)) / x[:, kept].std(0), atol=1e-4)
    np.testing.assert_array_equal(files.object_ids(), ids)
    table = {r["layer"]: r for r in info["table_iii"]}
    assert table["C21"] == {"layer": "C21", "initial": 8, "active": 6, "kept": int(np.sum(kept >= 12))}
    assert table["total"]["kept"] == len(kept) == info["kept"]
    # Ω eq. 5 from the label column, on the train split only
    assert {k: info["omega"][k] for k in ("estimator", "classes_from", "rows")} == {
        "estimator": "clusters", "classes_from": "label", "rows": "split = train"}
    # `--tau auto` without learned Ω: the paper's τ, said so
    assert info["omega"]["tau"] == info["config"]["tau"] == 1.0 and "paper" in info["omega"]["tau_choice"]
    omega = files.read_omega()
    zt = z[:200]
    labels = np.array(catalog.read_objects(["label"]).column("label").to_pylist())[:200]
    means = np.stack([zt[labels == c].mean(0) for c in CLASSES])
    want = sum(np.abs(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3))
    np.testing.assert_allclose(omega, want / want.sum(), rtol=1e-4)
    assert info["recall"]["queries"] == 0  # 300 objects: the exact index


def test_query_by_id_matches_exact_ranking_and_carries_metadata(catalog):
    build(catalog)
    s = Searcher.open(catalog.root)
    table = s.search(ids=[5], k=5)
    assert table.column("object_id")[0].as_py() == 5 and table.column("score")[0].as_py() == pytest.approx(1.0)
    Z, _ = s.space_of(None)  # the rows the build's Ω is measured on (the stored z, or l2 rows: engine.row_map)
    m = make_membership("gaussian", Z[5], s.tau)
    P, rows = exact_search(Z, [m], s.omega, 5)
    assert table.column("object_id").to_pylist() == s.object_ids[rows[0]].tolist()
    np.testing.assert_allclose(table.column("score").to_numpy(), P[0], atol=1e-6)
    labels = catalog.read_objects(["object_id", "label"]).to_pydict()
    assert table.column("label").to_pylist() == [labels["label"][i] for i in table.column("object_id").to_pylist()]
    # a set of ids: trapezoid by default, every query object on the plateau
    two = s.search(ids=[5, 6], k=10).to_pylist()
    assert {5, 6} <= {r["object_id"] for r in two if r["score"] >= 1 - 1e-6}
    # raw feature vectors (what --image produces) give the same answer as their id
    _, x = all_features(catalog)
    by_vec = s.search(features=x[5:6], k=5)
    assert by_vec.column("object_id").to_pylist() == table.column("object_id").to_pylist()
    with pytest.raises(SearchError, match="no object 999"):
        s.search(ids=[999])


def test_query_time_omega_choice_scores_with_the_stored_estimator(catalog, tmp_path):
    build(catalog)  # labels → Ω auto; the build also stores eq. 5, welch and learned, uniform and svd are derived
    s = Searcher.open(catalog.root)
    assert set(s.omegas) == {"clusters", "uniform", "svd", "welch", "learned"}
    assert not np.allclose(s.omegas["uniform"], s.omegas["clusters"])
    assert not np.allclose(s.omegas["learned"], s.omegas["clusters"])
    for name in ("uniform", "welch", "learned"):
        table = s.search(ids=[7], k=5, omega=name, exact=True)
        Z, _ = s.space_of(name)  # the build's own estimator may be measured on l2 rows (engine.row_map)
        P, rows = exact_search(Z, [make_membership("gaussian", Z[7], s.tau)], s.omega_named(name), 5)
        assert table.column("object_id").to_pylist() == s.object_ids[rows[0]].tolist()
        np.testing.assert_allclose(table.column("score").to_numpy(), P[0], atol=1e-6)
    out = CliRunner().invoke(cli_main, ["query", "-c", str(catalog.root), "7", "--omega", "uniform", "--exact",
                                        "--format", "json", "-k", "3"])
    assert out.exit_code == 0, out.output
    assert [json.loads(line)["object_id"] for line in out.output.splitlines()] == \
        s.search(ids=[7], k=3, omega="uniform", exact=True).column("object_id").to_pylist()
    # without classes a build offers no clusters/welch Ω at query time, and says so
    unlabelled = new_catalog(tmp_path / "plain", LAYERS)
    x, _ = synthetic_objects(100, seed=5)
    append_objects(unlabelled, x, [None] * 100, "p", split=None)
    build(unlabelled)
    with pytest.raises(SearchError, match="no 'welch' Ω; it has svd, uniform"):
        Searcher.open(unlabelled.root).search(ids=[0], omega="welch")


def test_explain_splits_p_into_layer_parts_that_add_up(catalog):
    build(catalog)
    s = Searcher.open(catalog.root)
    most = s.omega_per_layer()
    assert set(most) == {"C11", "C12", "C21"} and sum(most.values()) == pytest.approx(1.0)
    for ids, membership in (([3], "gaussian"), ([3, 4, 9], "trapezoid"), ([3, 4], "max")):
        rows = s.search(ids=ids, k=8, membership=membership, explain=True).to_pylist()
        for r in rows:
            assert sum(r["layers"].values()) == pytest.approx(r["score"], abs=1e-5)
            assert all(0 <= r["layers"][name] <= most[name] + 1e-6 for name in most)
    # the query object matches itself fully in every layer
    first = s.search(ids=[3], k=1, explain=True).to_pylist()[0]
    assert first["layers"] == pytest.approx(most, abs=1e-6)
    runner = CliRunner()
    out = runner.invoke(cli_main, ["query", "-c", str(catalog.root), "3", "-k", "4", "--explain", "--format", "json"])
    assert out.exit_code == 0, out.output
    for line in out.output.splitlines():
        r = json.loads(line)
        assert sum(r["layers"].values()) == pytest.approx(r["score"], abs=1e-5)
    out = runner.invoke(cli_main, ["query", "-c", str(catalog.root), "3", "-k", "4", "--explain", "--format", "csv"])
    assert out.exit_code == 0 and out.output.splitlines()[0].count("layers.") == 3, out.output
    out = runner.invoke(cli_main, ["query", "-c", str(catalog.root), "3", "-k", "4", "--explain"])
    assert out.exit_code == 0 and "weakest layers (match)" in out.output and "1.00" in out.output


def test_where_filter(catalog):
    build(catalog)
    s = Searcher.open(catalog.root)
    t = s.search(ids=[5], k=50, where="label = 'bag' AND split = 'test'")
    assert t.num_rows > 0 and set(t.column("label").to_pylist()) == {"bag"}
    assert set(t.column("split").to_pylist()) == {"test"}
    with pytest.raises(SearchError, match="bad --where"):
        s.search(ids=[5], where="no_such_column = 1")
    out = CliRunner().invoke(cli_main, ["query", "-c", str(catalog.root), "5", "--where", "label = 'shoe'"])
    assert out.exit_code == 0 and "no object matches --where \"label = 'shoe'\"" in out.output


def test_delete_hides_at_once_and_survives_rebuild(catalog):
    build(catalog)
    before = Searcher.open(catalog.root).search(ids=[5], k=4).column("object_id").to_pylist()
    victim = before[1]
    catalog.add_deleted([victim])
    after = Searcher.open(catalog.root).search(ids=[5], k=4).column("object_id").to_pylist()
    assert victim not in after and after[:2] == [before[0], before[2]]
    build(catalog)
    assert victim not in Searcher.open(catalog.root).search(ids=[5], k=4).column("object_id").to_pylist()


def test_append_then_rebuild_reuses_statistics_and_finds_new_objects(catalog):
    first = build(catalog)
    old = Searcher.open(catalog.root)
    x, labels = synthetic_objects(50, seed=7)
    append_objects(catalog, x, labels, "c")
    with pytest.raises(SearchError, match="next `simdex build`"):
        old.search(ids=[320])
    second = build(catalog)
    assert second.info["shards_reused_for_statistics"] == 2 and second.version != first.version
    # the reused statistics equal a fresh pass over every shard
    stats = FeatureStats(N)
    for _, xb in catalog.iter_features():
        stats.update(xb)
    np.testing.assert_allclose(BuildFiles(second.path).read_stats()[0].gram, stats.gram, rtol=1e-10)
    new = Searcher.open(catalog.root)
    assert new.search(ids=[320], k=1).column("object_id").to_pylist() == [320]
    # the reader that opened the old build keeps working on it
    assert old.search(ids=[5], k=3).num_rows == 3 and old.version == first.version
    # a third build removes the first; the two newest stay
    third = build(catalog)
    versions = sorted(p.name for p in (catalog.root / "builds").iterdir() if not p.name.startswith("."))
    assert versions == [second.version, third.version]


def test_ivf_build_records_recall_and_equals_exact_with_all_candidates(tmp_path):
    cat = new_catalog(tmp_path / "cat", LAYERS)
    x, labels = synthetic_objects(3000, seed=3)
    append_objects(cat, x, labels, "a")
    result = build(cat, BuildConfig(index="ivf", recall_queries=20, index_options={"nlist": 16, "nprobe": 4}))
    r = result.info["recall"]
    assert result.info["candidates"]["kind"] == "ivf" and r["queries"] == 20
    assert 0.5 <= r["recall_at_10_mean"] <= 1.0
    s = Searcher.open(cat.root)
    exact = s.search(ids=[11], k=10, exact=True)
    full = s.search(ids=[11], k=10, n_candidates=3000, nprobe=16)
    assert full.column("object_id").to_pylist() == exact.column("object_id").to_pylist()


def test_nprobe_of_one_search_does_not_change_later_searches(tmp_path):
    cat = new_catalog(tmp_path / "cat", LAYERS)
    x, labels = synthetic_objects(3000, seed=3)
    append_objects(cat, x, labels, "a")
    build(cat, BuildConfig(index="ivf", recall_queries=0, index_options={"nlist": 16, "nprobe": 16}))
    s = Searcher.open(cat.root)
    before = s.search(ids=[11], k=10, n_candidates=3000).column("object_id").to_pylist()
    narrow = s.search(ids=[11], k=10, n_candidates=3000, nprobe=1).column("object_id").to_pylist()
    assert s.index.nprobe == 16
    assert narrow != before  # one list of 16 cannot hold every candidate of the full probe …
    assert s.search(ids=[11], k=10, n_candidates=3000).column("object_id").to_pylist() == before  # … and it did not stick


def test_ivf_build_of_tiny_catalogs_and_without_recall_queries(tmp_path):
    tiny = new_catalog(tmp_path / "tiny", LAYERS)
    x, labels = synthetic_objects(40, seed=9)
    append_objects(tiny, x[:1], labels[:1], "one")
    result = build(tiny, BuildConfig(index="ivf", omega="uniform"))
    assert result.info["candidates"]["kind"] == "ivf"
    append_objects(tiny, x[1:], labels[1:], "rest")
    result = build(tiny, BuildConfig(index="ivf", recall_queries=0))
    assert result.info["recall"]["queries"] == 0 and result.info["recall"]["recall_at_10_mean"] is None
    assert "not measured" in format_build_summary(result.info, result.version)
    assert Searcher.open(tiny.root).search(ids=[3], k=3).num_rows == 3


def test_kmeans_clusters_give_no_welch_omega(tmp_path):
    plain = new_catalog(tmp_path / "plain", LAYERS)
    x, _ = synthetic_objects(100, seed=5)
    append_objects(plain, x, [None] * 100, "p", split=None)
    build(plain, BuildConfig(omega="clusters"))
    s = Searcher.open(plain.root)
    assert s.info["omega"]["classes_from"].startswith("k-means")
    assert set(s.omegas) == {"clusters", "uniform", "svd"}


def test_build_errors(tmp_path, catalog):
    empty = new_catalog(tmp_path / "empty", LAYERS)
    with pytest.raises(BuildError, match="no objects"):
        build(empty)
    with pytest.raises(BuildError, match="no such column"):
        build(catalog, BuildConfig(clusters_from="colour"))
    with pytest.raises(SearchError, match="no build yet"):
        Searcher.open(catalog.root)


def test_cli_build_query_delete(catalog):
    runner = CliRunner()
    root = str(catalog.root)
    out = runner.invoke(cli_main, ["build", "--catalog", root, "-q"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli_main, ["query", "--catalog", root, "5", "-k", "3"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "object_id", "P"] and lines[1].split()[:3] == ["1", "5", "1.0000"]
    out = runner.invoke(cli_main, ["query", "--catalog", root, "5", "-k", "3", "--format", "json"])
    rows = [json.loads(line) for line in out.output.strip().splitlines()]
    assert len(rows) == 3 and rows[0]["object_id"] == 5 and rows[0]["score"] == pytest.approx(1.0)
    out = runner.invoke(cli_main, ["query", "--catalog", root, "5", "--format", "csv", "-k", "2"])
    assert out.output.splitlines()[0].startswith('"rank","object_id","score"')
    pq_path = Path(root).parent / "r.parquet"
    out = runner.invoke(cli_main, ["query", "--catalog", root, "5", "--format", "parquet", "-o", str(pq_path)])
    assert out.exit_code == 0 and pq.read_table(pq_path).num_rows == 10
    out = runner.invoke(cli_main, ["delete", "--catalog", root, str(rows[1]["object_id"])])
    assert out.exit_code == 0 and "deleted 1" in out.output
    out = runner.invoke(cli_main, ["query", "--catalog", root, "5", "-k", "3", "--format", "json"])
    assert rows[1]["object_id"] not in [json.loads(line)["object_id"] for line in out.output.strip().splitlines()]
    # user mistakes: a message, never a traceback
    for args in (["query", "--catalog", root, "99999"], ["query", "--catalog", root, "5", "--where", "nope = 1"],
                 ["query", "--catalog", root], ["delete", "--catalog", root, "99999"],
                 ["query", "--catalog", root, "5", "6", "--membership", "gaussian"],
                 ["query", "--catalog", root, str(10**22)], ["delete", "--catalog", root, str(10**22)],
                 ["build", "--catalog", str(Path(root).parent / "missing")]):
        out = runner.invoke(cli_main, args)
        assert out.exit_code != 0 and (out.exception is None or isinstance(out.exception, SystemExit)), args
        assert "Traceback" not in out.output


def test_query_by_id_does_not_import_torch_or_duckdb(catalog):
    build(catalog)
    code = ("import sys; from simdex.cli.main import main; "
            f"main(['query', '--catalog', {str(catalog.root)!r}, '5', '-k', '2'], standalone_mode=False); "
            "print('LOADED', 'torch' in sys.modules, 'duckdb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED False False" in out.stdout, out.stdout + out.stderr


def test_shard_reader_unifies_sources_and_keeps_commit_order(tmp_path):
    cat = new_catalog(tmp_path / "cat", LAYERS)
    x, labels = synthetic_objects(30, seed=5)
    append_objects(cat, x[:10], labels[:10], "a", split="train")
    append_objects(cat, x[10:], labels[10:], "b", split=None)  # a source without a split column
    reader = cat.shards()
    assert "split" in reader.columns and "features" not in reader.columns
    batches = list(reader.batches(["object_id", "split", "features"], batch_rows=7))
    assert max(b.num_rows for b in batches) <= 7
    ids = np.concatenate([b.column("object_id").to_numpy() for b in batches])
    np.testing.assert_array_equal(ids, np.arange(30))
    splits = sum((b.column("split").to_pylist() for b in batches), [])
    assert splits == ["train"] * 10 + [None] * 20
    got = np.concatenate([X for _, X in reader.iter_features(batch_rows=4)])
    np.testing.assert_array_equal(got, x)
    assert cat.shards(first=1).read(["object_id"]).column("object_id").to_pylist() == list(range(10, 30))
    assert reader.take(np.array([25, 3]), ["label"]).column("object_id").to_pylist() == [25, 3]
    with pytest.raises(KeyError, match="no column nope"):
        reader.read(["nope"])


def test_build_files_round_trip(catalog):
    result = build(catalog)
    files = catalog.current_build()
    assert files.folder == result.path and files.version == result.version
    assert files.read_info() == json.loads(json.dumps(result.info))
    pruning = files.read_pruning()
    assert pruning.retained == pytest.approx(result.info["retained"])
    assert files.z().shape == (300, len(pruning.kept)) == files.codes().shape
    stats, shards = files.read_stats()
    assert stats.count == 300 and shards == result.info["shards"]
    np.testing.assert_allclose(files.read_codec().decode(files.codes()[:5]), files.z()[:5], atol=0.1)
