"""An Ω measured on l2 rows (`engine.row_map`, `simdex build --omega-row-map`): the build fits a label
column's Ω on unit-length rows too and keeps it where held-out queries rank better; queries by id and by
vector, SQL, explanations and `simdex eval` then measure that Ω on the same mapped rows."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, class_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, build
from simdex.engine.check import check_catalog
from simdex.engine.errors import SimdexError
from simdex.engine.membership import make_membership
from simdex.engine.pruning import FeatureStats, Pruning
from simdex.engine.row_map import UnitLengthMap
from simdex.engine.scoring import fuzzy_scores
from simdex.engine.searcher import Searcher
from simdex.engine.sql import SqlSession
from simdex.evaluate import BUILD_OMEGA, EvalConfig, evaluate

LAYERS = [("C11", 6), ("C12", 6), ("C21", 8)]
CLASSES = ["boot", "sandal", "bag"]


def _catalog(root, n=360, seed=3):
    """Classes that differ in the direction of the raw vector, objects of any strength: each row
    scaled by 0.2–5 (contrast, size), which the stored z-scores count and unit-length rows do not."""
    cat = new_catalog(root, LAYERS)
    x, labels = class_objects(n, seed, CLASSES, 20)
    x = x * np.random.default_rng(seed).uniform(0.2, 5.0, (n, 1))
    append_objects(cat, x[: 2 * n // 3], labels[: 2 * n // 3], "a", split="train")
    append_objects(cat, x[2 * n // 3:], labels[2 * n // 3:], "b", split="test")
    return cat, x


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    cat, x = _catalog(tmp_path_factory.mktemp("rowmap") / "cat")
    result = build(cat, BuildConfig())
    return cat, x, result.info


def test_the_map_is_the_z_score_of_unit_length_kept_features():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(1, 1, (200, 9)), 0) * rng.uniform(0.1, 4, (200, 1))
    stats = FeatureStats(9)
    stats.update(x)
    pruning = Pruning.from_stats(stats, retain=1.0)
    z = pruning.normalise(x)
    row_map = UnitLengthMap.fit(z, pruning.mean, pruning.std, batch_rows=64)  # in several batches
    u = x[:, pruning.kept] / np.linalg.norm(x[:, pruning.kept], axis=1, keepdims=True)
    np.testing.assert_allclose(row_map.apply(z), (u - u.mean(0)) / u.std(0), atol=1e-4)
    np.testing.assert_allclose(row_map.apply(pruning.normalise(3.0 * x[:5])), row_map.apply(z[:5]), atol=1e-4)


def test_the_build_keeps_the_label_omega_on_l2_rows_where_it_ranks_better(mapped):
    cat, _, info = mapped
    record = info["omega"]
    assert record["row_map"] == "l2", record.get("row_map_choice")
    stored, on_l2 = (float(v) for v in
                     [record["row_map_choice"].split("mAP ")[1].split(" ")[0],
                      record["row_map_choice"].split(", ")[1].split(" ")[0]])
    assert on_l2 > stored + 1e-3
    assert record["learned_l2"]["validation_queries"] == record["learned"]["validation_queries"]
    s = Searcher.open(cat.root)
    assert s.row_map_of(None) == s.row_map_of("label") == "l2"
    assert s.row_map_of("uniform") == "none"  # the other estimators stay on the stored z
    assert s.files.z_l2().shape == s.Z.shape


def test_every_path_scores_the_l2_omega_on_the_mapped_rows(mapped):
    cat, x, _ = mapped
    s = Searcher.open(cat.root)
    Z, row_map = s.space_of(None)
    want = fuzzy_scores(np.asarray(Z), make_membership("gaussian", np.asarray(Z)[11], s.tau), s.omega)
    top = np.argsort(-want, kind="stable")[:5]
    by_id = s.search(ids=[11], k=5, columns=[], explain=True)
    assert by_id.column("object_id").to_pylist() == s.object_ids[top].tolist()
    np.testing.assert_allclose(by_id.column("score").to_numpy(), want[top], atol=1e-5)
    layers = by_id.column("layers").to_pylist()
    np.testing.assert_allclose([sum(r.values()) for r in layers], want[top], atol=1e-4)  # parts add up to P
    by_vector = s.search(features=4.0 * x[[11]], k=5, columns=[])  # any multiple of an object is that object
    assert by_vector.column("object_id").to_pylist()[0] == 11
    with SqlSession(cat) as sql:
        got = sql.query("SELECT simdex_p(f.features, q.features) AS p FROM features f, features q "
                        "WHERE q.object_id = 11 ORDER BY f.object_id").column("p").to_numpy()
    assert np.max(np.abs(got - want)) < 1e-5
    stored = s.search(ids=[11], k=5, columns=[], omega="uniform")  # an estimator on the stored z
    P = fuzzy_scores(np.asarray(s.Z), make_membership("gaussian", np.asarray(s.Z)[11], s.tau),
                     s.omega_named("uniform"))
    np.testing.assert_allclose(stored.column("score").to_numpy(), np.sort(P)[::-1][:5], atol=1e-5)
    assert row_map is not None


def test_eval_measures_every_omega_where_the_build_omega_is(mapped, tmp_path):
    cat, _, _ = mapped
    result = evaluate(cat.root, EvalConfig(num_queries=0, methods=(BUILD_OMEGA, "fuzzy P, Ω uniform",
                                                                   "cosine, raw vectors")))
    assert result["omega_row_map"] == "l2"
    same, _ = _catalog(tmp_path / "cat")  # the same objects, built without the map (the module's catalog stays)
    none_build = build(same, BuildConfig(omega_row_map="none"))
    assert "row_map" not in none_build.info["omega"]
    assert not (none_build.path / "z_l2.npy").exists()
    plain = evaluate(same.root, EvalConfig(num_queries=0, methods=(BUILD_OMEGA,)))
    assert plain["omega_row_map"] == "none" and plain["queries"] == result["queries"]
    # on classes of direction, the l2 rows rank better: what the build measured on held-out queries
    assert result["results"][BUILD_OMEGA]["map"] > plain["results"][BUILD_OMEGA]["map"]


def test_a_damaged_or_missing_mapped_matrix_is_named(tmp_path):
    cat, _ = _catalog(tmp_path / "cat")
    build(cat, BuildConfig())
    z_l2 = cat.current_build_dir() / "z_l2.npy"
    data = bytearray(z_l2.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    z_l2.write_bytes(bytes(data))
    problems = check_catalog(cat.root).problems
    assert [p.path.split("/")[-1] for p in problems] == ["z_l2.npy"], problems
    z_l2.unlink()
    with pytest.raises(SimdexError, match="z_l2.npy"):
        Searcher.open(cat.root).search(ids=[3], k=3)


def test_cli_build_prints_the_row_choice_and_takes_none(tmp_path):
    cat, _ = _catalog(tmp_path / "cat", n=240)
    r = CliRunner().invoke(cli_main, ["build", "--catalog", str(cat.root)])
    assert r.exit_code == 0, r.output
    assert "Ω's rows: l2: held-out mAP" in r.output
    r = CliRunner().invoke(cli_main, ["build", "--catalog", str(cat.root), "--omega-row-map", "none"])
    assert r.exit_code == 0 and "Ω's rows" not in r.output, r.output
    r = CliRunner().invoke(cli_main, ["build", "--catalog", str(cat.root), "--omega-row-map", "l1"])
    assert r.exit_code == 2 and "Traceback" not in r.output
