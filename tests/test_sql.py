"""`simdex sql` (engine.sql): views, search results, the simdex_p macro against the engine,
and the refusals that keep the session read-only and inside the catalog."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, new_catalog
from synth_catalog import class_objects as synth_class_objects

from simdex.cli.main import main as cli_main
from simdex.engine.build import TAU_SEARCH, build
from simdex.engine.catalog import Catalog
from simdex.engine.membership import make_membership
from simdex.engine.scoring import fuzzy_scores
from simdex.engine.searcher import Searcher
from simdex.engine.sql import SearchSpec, SqlError, SqlSession

LAYERS = [("C11", 6), ("C12", 6), ("C21", 8)]
N = 20
CLASSES = ["boot", "sandal", "bag"]


def class_objects(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    return synth_class_objects(n, seed, CLASSES, N)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Catalog:
    cat = new_catalog(tmp_path_factory.mktemp("sql") / "cat", LAYERS)
    x, labels = class_objects(300, seed=1)
    append_objects(cat, x[:200], labels[:200], "a", split="train",
                   errors=[{"label": "boot", "reason": "decode", "detail": "truncated PNG"}])
    append_objects(cat, x[200:], labels[200:], "b", split="test")
    build(cat)
    return cat


def all_features(cat: Catalog) -> tuple[np.ndarray, np.ndarray]:
    parts = list(cat.iter_features())
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def test_views_match_the_catalog_and_the_build(built):
    ids, x = all_features(built)
    objects = built.read_objects()
    with SqlSession(built) as s:
        rows = s.query("SELECT label, count(*) AS n FROM objects GROUP BY 1 ORDER BY 1").to_pylist()
        labels = objects.column("label").to_pylist()
        assert rows == [{"label": c, "n": labels.count(c)} for c in sorted(CLASSES)]
        assert sum(r["n"] for r in rows) == 300
        cols = s.query("SELECT * FROM objects LIMIT 1").column_names
        assert "features" not in cols and {"object_id", "label", "split", "x0", "y1", "area"} <= set(cols)
        assert s.query("SELECT count(*) AS n FROM objects WHERE split = 'test'").column("n")[0].as_py() == 100
        feats = s.query("SELECT object_id, features FROM features ORDER BY object_id")
        np.testing.assert_array_equal(feats.column("object_id").to_numpy(), ids)
        np.testing.assert_array_equal(np.array(feats.column("features").to_pylist(), np.float32), x)
        err = s.query("SELECT * FROM errors").to_pylist()
        assert len(err) == 1 and err[0]["reason"] == "decode" and err[0]["detail"] == "truncated PNG"
        assert s.query("SELECT layer, channels, first_feature FROM layers ORDER BY first_feature").to_pylist() == [
            {"layer": "C11", "channels": 6, "first_feature": 0}, {"layer": "C12", "channels": 6, "first_feature": 6},
            {"layer": "C21", "channels": 8, "first_feature": 12}]
        # the build: kept features with their layer and channel, z-score, Ω; Table III
        files = built.current_build()
        pruning = files.read_pruning()
        kept, mean, std = pruning.kept, pruning.mean, pruning.std
        kf = s.query("SELECT * FROM kept_features ORDER BY j")
        np.testing.assert_array_equal(kf.column("feature").to_numpy(), kept)
        np.testing.assert_allclose(kf.column("mean").to_numpy(), mean)
        np.testing.assert_allclose(kf.column("std").to_numpy(), std)
        np.testing.assert_allclose(kf.column("omega").to_numpy(), files.read_omega(), rtol=1e-6)
        assert 12 not in kept
        for r in kf.to_pylist():
            layer = "C11" if r["feature"] < 6 else "C12" if r["feature"] < 12 else "C21"
            assert r["layer"] == layer and r["channel"] == r["feature"] - {"C11": 0, "C12": 6, "C21": 12}[layer]
        info = files.read_info()
        assert s.query("SELECT * FROM table_iii").to_pylist() == info["table_iii"]
        assert s.query("SELECT sum(omega) AS w, count(*) AS n FROM kept_features").to_pylist() == [
            {"w": pytest.approx(1.0), "n": info["kept"]}]
        b = s.query("SELECT version, objects, kept, tau FROM build").to_pylist()[0]
        assert b == {"version": files.version, "objects": 300, "kept": info["kept"], "tau": info["omega"]["tau"]}
        assert b["tau"] in TAU_SEARCH  # the τ `--tau auto` chose


def test_results_view_joins_with_objects_and_equals_the_searcher(built):
    searcher = Searcher.open(built.root)
    specs = [SearchSpec.parse("5 4"), SearchSpec.parse("7,8 3")]
    with SqlSession(built, specs) as s:
        rows = s.query("SELECT r.search, r.query, r.rank, r.object_id, r.score, o.label, o.split "
                       "FROM results r JOIN objects o USING (object_id) ORDER BY search, rank").to_pylist()
    assert [r["search"] for r in rows] == [1] * 4 + [2] * 3 and rows[0]["query"] == "5" and rows[4]["query"] == "7,8"
    for n, (ids, k) in enumerate([([5], 4), ([7, 8], 3)], start=1):
        want = searcher.search(ids=ids, k=k).to_pylist()
        got = [r for r in rows if r["search"] == n]
        assert [r["object_id"] for r in got] == [w["object_id"] for w in want]
        assert [r["label"] for r in got] == [w["label"] for w in want]
        assert [r["split"] for r in got] == [w["split"] for w in want]
        np.testing.assert_allclose([r["score"] for r in got], [w["score"] for w in want], atol=1e-7)
    assert rows[0]["object_id"] == 5 and rows[0]["score"] == pytest.approx(1.0)


def test_simdex_p_macro_agrees_with_the_engine(built):
    searcher = Searcher.open(built.root)
    ids, _ = all_features(built)
    Z = np.asarray(searcher.Z)
    rows = np.asarray(searcher.space_of(None)[0])  # what the build's Ω is measured on: z or its l2 rows
    for q, tau in ((5, None), (123, 0.5)):
        m = make_membership("gaussian", rows[q], searcher.tau if tau is None else tau)  # default: the build's τ
        engine_p = fuzzy_scores(rows, m, searcher.omega)  # every row of the catalog
        arg = "" if tau is None else f", tau := {tau}"
        with SqlSession(built) as s:
            got = s.query(f"SELECT f.object_id, simdex_p(f.features, q.features{arg}) AS p FROM features f, features q "
                          f"WHERE q.object_id = {q} ORDER BY f.object_id")
        np.testing.assert_array_equal(got.column("object_id").to_numpy(), ids)
        assert np.max(np.abs(got.column("p").to_numpy() - engine_p)) < 1e-5
    # the search scores themselves, and simdex_z against the build's matrix
    with SqlSession(built, [SearchSpec(ids=(42,), k=10)]) as s:
        both = s.query("SELECT r.score, simdex_p(f.features, q.features) AS p FROM results r "
                       "JOIN features f USING (object_id), features q WHERE q.object_id = 42").to_pydict()
        z = s.query("SELECT simdex_z(features) AS z FROM features ORDER BY object_id").column("z").to_pylist()
    np.testing.assert_allclose(both["p"], both["score"], atol=1e-5)
    np.testing.assert_allclose(np.array(z), Z, atol=1e-5)


@pytest.mark.parametrize("statement", [
    "COPY (SELECT * FROM objects) TO '{out}/x.csv'",
    "COPY objects TO '{cat}/x.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{out}/export'",
    "ATTACH '{out}/x.db' AS x",
    "SELECT * FROM read_csv('{out}/outside.csv')",
    "SELECT * FROM read_parquet('{out}/outside.parquet')",
    "SELECT * FROM '{out}/outside.parquet'",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('{out}/*')",
    "INSTALL httpfs",
    "LOAD httpfs",
])
def test_writes_and_reads_outside_the_catalog_are_refused(built, tmp_path, statement):
    (tmp_path / "outside.csv").write_text("a,b\n1,2\n")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "outside.parquet")
    before_out, before_cat = tree(tmp_path), tree(built.root)
    with SqlSession(built) as s, pytest.raises(SqlError, match="(?s)Permission Error.*refused: simdex sql reads only"):
        s.query(statement.format(out=tmp_path, cat=built.root))
    assert tree(tmp_path) == before_out and tree(built.root) == before_cat


@pytest.mark.parametrize("statement", ["SET enable_external_access = true", "SET lock_configuration = false",
                                       "RESET lock_configuration", "SET allowed_directories = ['/']",
                                       "SET temp_directory = '/tmp'", "PRAGMA threads = 1"])
def test_the_lock_cannot_be_undone(built, statement):
    with SqlSession(built) as s:
        with pytest.raises(SqlError, match="(?s)configuration has been locked.*refused"):
            s.query(statement)
        with pytest.raises(SqlError, match="Permission Error"):  # still locked after the attempt
            s.query("SELECT * FROM read_csv('/etc/hostname')")


def test_session_memory_only_and_sql_errors(built):
    before = tree(built.root)
    with SqlSession(built) as s:
        assert s.execute("CREATE TABLE mine AS SELECT label FROM objects") is not None
        assert s.query("SELECT count(*) AS n FROM mine").column("n")[0].as_py() == 300
        with pytest.raises(SqlError, match="syntax error"):
            s.query("SELEC 1")
        with pytest.raises(SqlError, match="(?s)nope does not exist.*views: .*objects"):
            s.query("SELECT * FROM nope")
        with pytest.raises(SqlError, match="only with searches"):
            s.query("SELECT * FROM results")
    assert tree(built.root) == before


def test_tombstones_no_build_and_bad_searches(tmp_path):
    cat = new_catalog(tmp_path / "cat", LAYERS)
    x, labels = class_objects(40, seed=2)
    append_objects(cat, x, labels, "a", split=None)
    cat.add_deleted([3, 4])
    with SqlSession(cat) as s:
        assert s.query("SELECT count(*) AS n FROM objects").column("n")[0].as_py() == 38
        assert s.query("SELECT count(*) AS n FROM features WHERE object_id IN (3, 4)").column("n")[0].as_py() == 0
        assert s.query("SELECT object_id FROM deleted ORDER BY 1").column("object_id").to_pylist() == [3, 4]
        with pytest.raises(SqlError, match="need a build"):
            s.query("SELECT * FROM kept_features")
    with pytest.raises(SqlError, match="no build yet"):
        SqlSession(cat, [SearchSpec((1,))])
    assert SearchSpec.parse("42") == SearchSpec((42,), 10)
    assert SearchSpec.parse(" 42, 43  k=5 ") == SearchSpec((42, 43), 5)
    for bad in ("", "x", "42 0", "42 5 6", "-1"):
        with pytest.raises(SqlError, match="bad search"):
            SearchSpec.parse(bad)


def test_cli_formats_and_errors(built, tmp_path):
    runner = CliRunner()
    root = str(built.root)
    out = runner.invoke(cli_main, ["sql", "-c", root, "SELECT label, count(*) AS n FROM objects GROUP BY 1 ORDER BY 1"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["label", "n"] and lines[2].split()[0] == "bag" and lines[-1] == "(3 rows)"
    out = runner.invoke(cli_main, ["sql", "-c", root, "SELECT * FROM features ORDER BY object_id LIMIT 2"])
    assert out.exit_code == 0 and "(20 values)]" in out.output and len(max(out.output.splitlines(), key=len)) < 100
    out = runner.invoke(cli_main, ["sql", "-c", root, "--search", "5 3", "--format", "json",
                                   "SELECT r.rank, r.object_id, o.label FROM results r JOIN objects o USING (object_id) "
                                   "ORDER BY rank"])
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert out.exit_code == 0 and [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["object_id"] == 5
    out = runner.invoke(cli_main, ["sql", "-c", root, "--format", "csv", "SELECT object_id, features FROM features "
                                   "WHERE object_id = 0"])
    header, row = out.output.splitlines()
    assert header == "object_id,features" and len(json.loads(row.split(",", 1)[1].strip('"'))) == N
    dest = tmp_path / "o.parquet"
    out = runner.invoke(cli_main, ["sql", "-c", root, "--format", "parquet", "-o", str(dest), "SELECT * FROM objects"])
    assert out.exit_code == 0 and pq.read_table(dest).num_rows == 300
    out = runner.invoke(cli_main, ["sql", "-c", root, "--views"])
    assert out.exit_code == 0 and "kept_features:" in out.output and "results" not in out.output
    out = runner.invoke(cli_main, ["sql", "-c", root, "--max-rows", "2", "SELECT object_id FROM objects"])
    assert "more rows follow" in out.output and len(out.output.splitlines()) == 5
    # mistakes and refusals: a message, never a traceback
    for args in (["sql", "-c", root, f"COPY objects TO '{tmp_path}/x.csv'"], ["sql", "-c", root, "SELEC 1"],
                 ["sql", "-c", root, "--search", "99999", "SELECT 1"], ["sql", "-c", root, "--search", "x", "SELECT 1"],
                 ["sql", "-c", root], ["sql", "-c", str(tmp_path / "missing"), "SELECT 1"],
                 ["sql", "-c", root, "--format", "parquet", "SELECT 1"]):
        out = runner.invoke(cli_main, args)
        assert out.exit_code != 0 and (out.exception is None or isinstance(out.exception, SystemExit)), args
        assert "Traceback" not in out.output and "Error" in out.output, args
    assert not os.path.exists(tmp_path / "x.csv")
