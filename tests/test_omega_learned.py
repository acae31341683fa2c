"""Learned Ω: the fit on synthetic data where few features carry the class, its simplex
constraint and seed, the build's choice (`--omega auto|learned`) and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import TAU_SEARCH, BuildConfig, BuildError, _auto_choice, build
from simdex.engine.omega import ClassStats, OmegaError, OmegaInputs, make_omega
from simdex.engine.omega_learned import (
    LearnedOmegaConfig,
    anchor_prior,
    fit_simplex_weights,
    learn_omega,
    validate_omegas,
)
from simdex.engine.searcher import Searcher

SMALL = LearnedOmegaConfig(sample_rows=800, fit_queries=128, steps=150, validation_gallery=600)


def few_informative(n: int, seed: int, d: int = 40, informative: int = 3, classes: int = 4):
    """z-scored rows where only the first `informative` features depend on the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = np.random.default_rng(123).normal(0, 1.5, (classes, informative))
    z = rng.normal(size=(n, d))
    z[:, :informative] += centres[y]
    z = (z - z.mean(0)) / z.std(0)
    return z.astype(np.float32), y.astype(object)


def test_learned_omega_beats_uniform_where_few_features_carry_the_class():
    z, y = few_informative(800, seed=1)
    fit = learn_omega(z, y, tau=1.0, config=SMALL)
    assert fit.omega[:3].sum() > 3 * 3 / 40  # the informative features gain weight
    assert fit.validation["learned"]["map"] > fit.validation["uniform"]["map"] + 0.05
    # and on fresh data it never saw (queries and gallery both new)
    zq, yq = few_informative(100, seed=2)
    zg, yg = few_informative(600, seed=3)
    res = validate_omegas(zq, yq, zg, yg, {"learned": fit.omega, "uniform": np.full(40, 1 / 40)}, 1.0)
    assert res["learned"]["map"] > res["uniform"]["map"] + 0.05
    assert res["learned"]["p@10"] > res["uniform"]["p@10"]


def test_learned_omega_is_on_the_simplex_and_seeded():
    z, y = few_informative(400, seed=4)
    a = learn_omega(z, y, config=SMALL)
    b = learn_omega(z, y, config=SMALL)
    other = learn_omega(z, y, config=LearnedOmegaConfig(**{**SMALL.__dict__, "seed": 1}))
    assert np.all(a.omega >= 0) and a.omega.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(a.omega, b.omega)
    assert a.record == {**b.record, "seconds": a.record["seconds"]}
    assert not np.allclose(a.omega, other.omega)  # the seed draws the sample, split and candidates
    assert {f"{s:g}" for s in SMALL.strengths} <= set(a.record["strengths"])
    assert a.strength in SMALL.strengths and a.record["seed"] == 0


def test_strong_pull_keeps_omega_near_uniform():
    z, y = few_informative(300, seed=5)
    rng = np.random.default_rng(0)
    q, c = rng.integers(0, 300, 64), rng.integers(0, 300, (64, 20))
    G = np.exp(-np.square(z[c] - z[q][:, None]))
    rel = y[c] == y[q][:, None]
    rel[:, 0], rel[:, 1] = True, False
    w, beta = fit_simplex_weights(G.astype(np.float32), rel, [0.0, 100.0], steps=100)
    assert w.shape == (2, 40) and beta.shape == (2,)
    assert np.abs(w[1] - 1 / 40).max() < np.abs(w[0] - 1 / 40).max()
    assert np.abs(w[1] - 1 / 40).max() < 0.005


def test_a_fit_from_a_prior_starts_there_and_a_strong_pull_keeps_it():
    z, y = few_informative(300, seed=5)
    rng = np.random.default_rng(0)
    q, c = rng.integers(0, 300, 64), rng.integers(0, 300, (64, 20))
    G = np.exp(-np.square(z[c] - z[q][:, None])).astype(np.float32)
    rel = y[c] == y[q][:, None]
    rel[:, 0], rel[:, 1] = True, False
    prior = anchor_prior(np.r_[np.full(3, 0.3), np.zeros(37)])
    assert prior.min() > 0 and prior.sum() == pytest.approx(1.0)
    w, _ = fit_simplex_weights(G, rel, [0.0], steps=0, priors=prior)
    np.testing.assert_allclose(w[0], prior)
    w, _ = fit_simplex_weights(G, rel, [0.0, 1000.0], steps=100, priors=np.stack([prior, prior]))
    assert np.abs(w[1] - prior).max() < np.abs(w[0] - prior).max()
    assert np.abs(w[1] - prior).max() < 0.01
    # no prior is the uniform one, to the bit
    a, _ = fit_simplex_weights(G, rel, [0.1], steps=20)
    b, _ = fit_simplex_weights(G, rel, [0.1], steps=20, priors=np.full(40, 1 / 40))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_learned_omega_refines_a_reference_where_fits_from_uniform_fall_short():
    """Fits from uniform with few steps stay near uniform; a reference Ω that already knows the informative
    features is a better start, so a fit from it wins on held-out queries and the record says so."""
    z, y = few_informative(800, seed=8)
    short = LearnedOmegaConfig(**{**SMALL.__dict__, "steps": 2})
    oracle = np.r_[np.full(3, 1 / 3), np.zeros(37)]
    fit = learn_omega(z, y, config=short, reference={"oracle": oracle})
    assert fit.record["start"] == "oracle" and fit.omega[:3].sum() > 0.9
    assert {f"{s:g} from oracle" for s in short.anchor_strengths} <= set(fit.record["strengths"])
    assert fit.validation["learned"]["map"] > fit.record["strengths"]["0"]["map"] + 0.05
    # without fits from the references the same sample gives the fit from uniform, as before
    plain = learn_omega(z, y, config=LearnedOmegaConfig(**{**short.__dict__, "anchor_strengths": ()}),
                        reference={"oracle": oracle})
    assert plain.record["start"] == "uniform" and plain.omega[:3].sum() < 0.5
    assert plain.record["strengths"]["0"] == fit.record["strengths"]["0"]


def test_learned_omega_needs_two_classes():
    z, _ = few_informative(100, seed=6)
    with pytest.raises(OmegaError, match="2 classes"):
        learn_omega(z, np.array(["a"] * 100, dtype=object))
    with pytest.raises(OmegaError, match="labelled rows"):
        make_omega("learned").estimate(OmegaInputs(dim=40))


def test_class_stats_without_rows_equals_stats_of_the_rest():
    z, y = few_informative(200, seed=7)
    full = ClassStats(40)
    full.update(z, y)
    rest = ClassStats(40)
    rest.update(z[50:], y[50:])
    out = full.without(z[:50], y[:50])
    np.testing.assert_allclose(out.means()[[out.classes[k] for k in rest.classes]], rest.means(), atol=1e-9)
    np.testing.assert_allclose(out.counts[[out.classes[k] for k in rest.classes]], rest.counts)


def test_auto_choice_takes_learned_only_when_it_beats_eq5_and_welch():
    val = {"learned": {"map": 0.5}, "clusters": {"map": 0.4}, "welch": {"map": 0.45}, "uniform": {"map": 0.3}}
    assert _auto_choice(val)[0] == "learned"
    val["learned"]["map"] = 0.44
    name, reason = _auto_choice(val)
    assert name == "welch" and "does not beat" in reason and "learned 0.4400" in reason


@pytest.fixture
def labelled_catalog(tmp_path):
    """Train and test objects whose class lives in 3 of 24 raw features (the rest is noise)."""
    cat = new_catalog(tmp_path / "cat", [("C11", 12, 1), ("C21", 12, 2)])
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 400)
    x = np.abs(rng.normal(1.0, 1.0, (400, 24)))
    x[:, :3] += 2 * np.eye(3)[y]
    labels = [["boot", "bag", "shirt"][i] for i in y]
    append_objects(cat, x[:300].astype(np.float32), labels[:300], "a")
    append_objects(cat, x[300:].astype(np.float32), labels[300:], "b", split="test")
    return cat


def test_cli_build_omega_learned_end_to_end(labelled_catalog):
    root = str(labelled_catalog.root)
    runner = CliRunner()
    out = runner.invoke(cli_main, ["build", "-c", root, "--omega", "learned", "--retain", "1.0", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert "Ω: learned from label (split = train)" in out.output and "learned Ω: τ = " in out.output
    assert "τ: " in out.output and "auto: the best held-out mAP of learned Ω" in out.output
    s = Searcher.open(root)
    record = s.info["omega"]
    assert record["estimator"] == "learned" and record["learned"]["seed"] == 3
    assert record["learned"]["sample_rows"] == 300  # train rows only
    assert set(record["learned"]["validation"]) == {"learned", "clusters", "welch", "uniform"}
    # `--tau auto`: learned Ω fitted at every τ of the grid; the build uses the one of the best held-out mAP
    tried = record["learned"]["tau_search"]
    assert set(tried) == {f"{t:g}" for t in TAU_SEARCH}
    best = max(TAU_SEARCH, key=lambda t: tried[f"{t:g}"]["map"])
    assert s.tau == record["tau"] == record["learned"]["tau"] == best
    assert record["learned"]["validation"]["learned"]["map"] == tried[f"{best:g}"]["map"]
    given = runner.invoke(cli_main, ["build", "-c", root, "--omega", "learned", "--tau", "0.8"])
    assert given.exit_code == 0 and Searcher.open(root).tau == 0.8 and "τ: 0.8 (given)" in given.output
    assert "tau_search" not in Searcher.open(root).info["omega"]["learned"]
    for bad in ("0", "-1", "wide"):
        res = runner.invoke(cli_main, ["build", "-c", root, "--tau", bad])
        assert res.exit_code == 2 and "--tau" in res.output and "Traceback" not in res.output
    assert s.omega[:3].sum() > 3 / 24  # the class features weigh more than equal weights give them
    assert set(s.omegas) == {"learned", "clusters", "welch", "uniform", "svd"}
    res = runner.invoke(cli_main, ["query", "-c", root, "0", "--omega", "clusters", "--exact", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.splitlines()[0])["object_id"] == 0


def test_auto_records_its_choice_and_learned_needs_labels(labelled_catalog, tmp_path):
    info = build(labelled_catalog, BuildConfig(retain=1.0)).info["omega"]
    assert info["estimator"] in {"learned", "clusters", "welch", "uniform"}
    assert info["choice"].startswith(info["estimator"])
    assert "learned" in Searcher.open(labelled_catalog.root).omegas
    plain = new_catalog(tmp_path / "plain", [("C11", 4, 1)])
    append_objects(plain, np.abs(np.random.default_rng(0).normal(size=(30, 4))).astype(np.float32), [None] * 30,
                   "p", split=None)
    with pytest.raises(BuildError, match="learned' needs a column of classes"):
        build(plain, BuildConfig(omega="learned"))
    # the Python API's τ: "auto" as the CLI's, a number given as text, a clear error for anything else
    assert build(plain, BuildConfig(tau="AUTO")).info["config"]["tau"] == 1.0  # no labels: the paper's
    assert build(plain, BuildConfig(tau="1.5")).info["config"]["tau"] == 1.5
    for bad in ("wide", [1.0], -2.0):
        with pytest.raises(BuildError, match="tau must be"):
            build(plain, BuildConfig(tau=bad))
    assert build(plain).info["omega"]["estimator"] == "uniform"
