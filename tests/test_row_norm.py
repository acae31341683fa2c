"""`simdex build --row-norm l2`: each object's raw vector at unit length before the statistics and
z-scores, applied alike by the build, queries by vector, SQL and explanations' consistency check."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, class_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, BuildError, build
from simdex.engine.membership import make_membership
from simdex.engine.pruning import PruningError, row_normalise
from simdex.engine.scoring import fuzzy_scores
from simdex.engine.searcher import Searcher
from simdex.engine.sql import SqlSession

LAYERS = [("C11", 6), ("C12", 6), ("C21", 8)]
CLASSES = ["boot", "sandal", "bag"]


def _catalog(root, n=240, seed=3):
    cat = new_catalog(root, LAYERS)
    x, labels = class_objects(n, seed, CLASSES, 20)
    x = x * np.random.default_rng(seed).uniform(0.2, 5.0, (n, 1))  # contrast: a per-object scale
    append_objects(cat, x[: n // 2], labels[: n // 2], "a", split="train")
    append_objects(cat, x[n // 2:], labels[n // 2:], "b", split="test")
    return cat, x


def test_row_normalise_gives_unit_rows_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(row_normalise(x, "l2"), [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]])
    assert row_normalise(x, "none") is x
    with pytest.raises(PruningError, match="unknown row normalisation"):
        row_normalise(x, "l1")


def test_l2_build_z_scores_unit_rows_and_every_path_agrees(tmp_path):
    cat, x = _catalog(tmp_path / "cat")
    result = build(cat, BuildConfig(row_norm="l2", omega="welch"))
    assert result.info["row_norm"] == "l2"
    s = Searcher.open(cat.root)
    assert s.pruning.row_norm == "l2"
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept = s.pruning.kept
    want = (u[:, kept] - u[:, kept].mean(0)) / u[:, kept].std(0)
    np.testing.assert_allclose(np.asarray(s.Z), want, atol=1e-4)
    # a query by vector is mapped as the build's rows: any positive multiple of an object is that object
    q = s.query_from_features(7.5 * x[[11]])
    np.testing.assert_allclose(q.z[0], np.asarray(s.Z)[11], atol=1e-4)
    # SQL's macros apply the same map
    m = make_membership("gaussian", np.asarray(s.Z)[11], s.tau)
    engine_p = fuzzy_scores(np.asarray(s.Z), m, s.omega)
    with SqlSession(cat) as sql:
        got = sql.query("SELECT simdex_p(f.features, q.features) AS p FROM features f, features q "
                        "WHERE q.object_id = 11 ORDER BY f.object_id").column("p").to_numpy()
        z = sql.query("SELECT simdex_z(features) AS z FROM features ORDER BY object_id").column("z").to_pylist()
    assert np.max(np.abs(got - engine_p)) < 1e-5
    np.testing.assert_allclose(np.array(z), np.asarray(s.Z), atol=1e-4)


def test_l2_ranks_a_rescaled_copy_first_where_raw_z_scores_do_not(tmp_path):
    cat, x = _catalog(tmp_path / "cat")
    build(cat, BuildConfig(row_norm="l2", omega="uniform"))
    s = Searcher.open(cat.root)
    hits = s.search(features=0.1 * x[[30]], k=1, columns=[]).column("object_id").to_pylist()
    assert hits == [30]


def test_statistics_are_reused_only_for_the_same_map(tmp_path):
    cat, x = _catalog(tmp_path / "cat")
    first = build(cat, BuildConfig(row_norm="none", omega="uniform"))
    assert first.info["row_norm"] == "none"
    again = build(cat, BuildConfig(row_norm="l2", omega="uniform"))
    assert again.info["shards_reused_for_statistics"] == 0  # the earlier statistics are of raw rows
    third = build(cat, BuildConfig(row_norm="l2", omega="uniform"))
    assert third.info["shards_reused_for_statistics"] == 2
    with pytest.raises(BuildError, match="row_norm"):
        build(cat, BuildConfig(row_norm="l1"))


def test_cli_build_row_norm(tmp_path):
    cat, _ = _catalog(tmp_path / "cat")
    res = CliRunner().invoke(cli_main, ["build", "--catalog", str(cat.root), "--row-norm", "l2"])
    assert res.exit_code == 0, res.output
    assert "rows mapped by l2 before z-scoring" in res.output
    assert Searcher.open(cat.root).pruning.row_norm == "l2"
    with SqlSession(cat) as sql:
        assert sql.query("SELECT row_norm FROM build").column("row_norm").to_pylist() == ["l2"]
    res = CliRunner().invoke(cli_main, ["eval", "--catalog", str(cat.root), "--queries", "20", "--quiet",
                                        "--method", "fuzzy P, build's Ω"])
    assert res.exit_code == 0, res.output
    assert "rows mapped by l2" in res.output
    res = CliRunner().invoke(cli_main, ["build", "--catalog", str(cat.root), "--row-norm", "max"])
    assert res.exit_code == 2 and "Traceback" not in res.output
