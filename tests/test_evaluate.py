"""Retrieval evaluation: the metrics by hand, the rankings on separable data, `simdex eval` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from simdex.cli.main import main
from simdex.engine.build import build
from simdex.engine.catalog import Catalog
from simdex.evaluate import (
    BUILD_OMEGA,
    METHODS,
    EvaluationError,
    evaluate,
    evaluate_arrays,
    format_table,
    paired_differences,
    rank_metrics,
)
from simdex.indexer.checkpoint import save_model
from simdex.indexer.runner import IndexOptions, index_source
from synth import controlled_model, fashion_like_folder


def test_rank_metrics_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    relevant = np.array([True, False, True, False, False])
    m = rank_metrics(scores, relevant, ks=(1, 2, 5))
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert (m["p@1"], m["p@2"], m["p@5"]) == (1.0, 0.5, 0.4)
    # ties keep gallery order: the first tied item ranks first
    assert rank_metrics(np.zeros(3), np.array([False, True, False]), ks=(1,))["ap"] == pytest.approx(0.5)


def test_every_ranking_is_perfect_on_well_separated_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 6)).astype(np.float32)
    lab_g = np.repeat(np.arange(3), 20).astype(object)
    lab_q = np.arange(3).astype(object)
    zg = centres[lab_g.astype(int)] + rng.normal(0, 0.1, (60, 6)).astype(np.float32)
    zq = centres + rng.normal(0, 0.1, (3, 6)).astype(np.float32)
    omegas = {"fuzzy P, Ω uniform": np.full(6, 1 / 6, np.float32)}
    res = evaluate_arrays(zq, zg, lab_q, lab_g, omegas, tau=1.0, raw_q=np.abs(zq), raw_g=np.abs(zg),
                          pix_q=zq, pix_g=zg, ks=(1, 10))
    assert set(res) == {"fuzzy P, Ω uniform", "L2, z-scored kept features", "cosine, raw vectors", "L2, raw pixels"}
    for name in ("fuzzy P, Ω uniform", "L2, z-scored kept features", "L2, raw pixels"):
        assert res[name]["map"] == pytest.approx(1.0) and res[name]["p@10"] == 1.0, name


def test_paired_differences_by_hand():
    # "a" finds the relevant answer first on 3 of 4 queries, "b" on 1: a − b = 0.5 in P@1; "a" against
    # itself-like "c" (the same figures) differs by 0 with a zero-width interval
    a, b = [1, 1, 1, 0], [1, 0, 0, 0]
    per_query = [{"a": {"ap": x, "p@1": x}, "b": {"ap": y, "p@1": y}, "c": {"ap": x, "p@1": x}} for x, y in zip(a, b)]
    d = paired_differences(per_query, "a", ks=(1,))
    assert set(d) == {"b", "c"}
    delta = np.array(a, float) - np.array(b, float)
    half = 1.96 * delta.std(ddof=1) / 2  # √4 queries
    assert d["b"]["p@1"]["diff"] == pytest.approx(0.5)
    assert d["b"]["p@1"]["ci95"] == pytest.approx([0.5 - half, 0.5 + half])
    assert d["c"]["map"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    assert paired_differences(per_query, "missing", ks=(1,)) == {} and paired_differences(per_query[:1], "a", (1,)) == {}


def test_paired_interval_tells_a_real_gap_from_noise():
    # 400 queries: a ranking 0.2 better on every other query has an interval far from 0; two rankings
    # that differ by coin flips have one that holds 0
    rng = np.random.default_rng(1)
    base = rng.random(400)
    flips = rng.random(400) < 0.5
    per_query = [{"ref": {"ap": x, "p@1": x}, "worse": {"ap": x - 0.2 * (i % 2), "p@1": x},
                  "noise": {"ap": x + (0.1 if f else -0.1), "p@1": x}} for i, (x, f) in enumerate(zip(base, flips))]
    d = paired_differences(per_query, "ref", ks=(1,))
    assert d["worse"]["map"]["ci95"][0] > 0.05
    lo, hi = d["noise"]["map"]["ci95"]
    assert lo < 0 < hi


@pytest.fixture(scope="module")
def fmnist_like_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    fashion_like_folder(data, train=240, test=60)
    model = root / "model.pt"
    save_model(controlled_model(), model)
    index_source(str(data), root / "cat", model, IndexOptions(workers=0, batch_size=64))
    build(Catalog.open(root / "cat"))
    return root / "cat"


def test_evaluate_catalog_compares_every_ranking(fmnist_like_catalog):
    from simdex.evaluate import EvalConfig

    res = evaluate(fmnist_like_catalog, EvalConfig(num_queries=40, ks=(1, 10)))
    assert (res["queries"], res["gallery"]) == (40, 240)
    assert list(res["results"]) == list(METHODS)
    chance = 1 / 3
    for m in res["results"].values():
        assert 0.0 <= m["map"] <= 1.0 and m["queries"] == 40
    # the classes differ by shape, which every ranking sees: all beat chance clearly
    assert res["results"]["fuzzy P, Ω eq. 5"]["p@10"] > chance + 0.3
    assert res["results"]["fuzzy P, Ω learned"]["p@10"] > chance + 0.3
    assert res["results"]["L2, raw pixels"]["p@10"] > chance + 0.1
    # the build's Ω row ranks with the Ω the build stored (what a query gets by default)
    from simdex.engine.searcher import Searcher

    s = Searcher.open(fmnist_like_catalog)
    assert res["build_omega"] == s.info["omega"]["estimator"]
    alone = evaluate(fmnist_like_catalog, EvalConfig(num_queries=40, ks=(1, 10), methods=("fuzzy P, build's Ω",)))
    assert alone["results"]["fuzzy P, build's Ω"] == res["results"]["fuzzy P, build's Ω"]
    assert alone["paired"] == {}  # nothing to compare it with
    # the paired block: the build's Ω against every other ranking, its mean the difference of the means
    paired = res["paired"]["differences"]
    assert res["paired"]["reference"] == BUILD_OMEGA and set(paired) == set(METHODS) - {BUILD_OMEGA}
    for name, d in paired.items():
        for key in ("map", "p@10"):
            want = res["results"][BUILD_OMEGA][key] - res["results"][name][key]
            assert d[key]["diff"] == pytest.approx(want) and d[key]["ci95"][0] <= want <= d[key]["ci95"][1]
    text = format_table(res)
    assert "paired over the same 40 queries" in text and "ΔP@10" in text and "L2, raw pixels" in text.split("ΔmAP")[1]
    assert "paired" not in format_table(res, paired=False)


def test_pixels_keep_colour_when_the_model_reads_three_channels(tmp_path):
    from PIL import Image

    from simdex.evaluate import _pixels

    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):  # same grey level, different colour
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8), colour).save(paths[-1])
    grey, rgb = _pixels(paths, channels=1), _pixels(paths, channels=3)
    assert grey.shape == (2, 64) and rgb.shape == (2, 192)
    np.testing.assert_allclose(grey[0], grey[1])  # grey cannot tell red from blue
    assert np.abs(rgb[0] - rgb[1]).max() == pytest.approx(1.0)


def test_cli_eval_table_and_json(fmnist_like_catalog):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--catalog", str(fmnist_like_catalog), "--queries", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "fuzzy P, Ω eq. 5" in res.output and "mAP" in res.output and "P@10" in res.output
    assert "fuzzy P, Ω learned" in res.output and "fuzzy P, build's Ω" in res.output
    res = runner.invoke(main, ["eval", "--catalog", str(fmnist_like_catalog), "--queries", "20", "--format", "json",
                               "--method", "fuzzy P, Ω uniform", "--quiet"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert list(out["results"]) == ["fuzzy P, Ω uniform"]


def test_eval_errors_are_clear(tmp_path, fmnist_like_catalog):
    with pytest.raises(EvaluationError, match="no labelled objects"):
        from simdex.evaluate import EvalConfig

        evaluate(fmnist_like_catalog, EvalConfig(query_split="validation"))
    res = CliRunner().invoke(main, ["eval", "--catalog", str(tmp_path / "none")])
    assert res.exit_code != 0 and "Traceback" not in res.output
