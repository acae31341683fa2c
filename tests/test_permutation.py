"""Permutation-invariant similarity (Wald et al.): the maths, the rerank mode and `simdex rsm`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import Catalog
from simdex.engine.permutation import (
    best_matching,
    greedy_assignment,
    rsm,
    semantic_similarity,
    spatial_similarity,
)
from simdex.engine.searcher import Searcher
from simdex.indexer.checkpoint import save_model
from simdex.indexer.runner import IndexOptions, index_source
from simdex.permutation_search import permutation_rerank, responses
from synth import controlled_model


def test_permuting_positions_keeps_semantic_and_changes_spatial():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(16, 8)), 0)
    b = np.maximum(a + rng.normal(0, 0.3, size=a.shape), 0)
    perm = rng.permutation(16)
    for matcher in ("optimal", "greedy"):
        assert semantic_similarity(a, b[perm], matcher) == pytest.approx(semantic_similarity(a, b, matcher), abs=1e-12)
        assert semantic_similarity(a[perm], b, matcher) == pytest.approx(semantic_similarity(a, b, matcher), abs=1e-12)
    assert abs(spatial_similarity(a, b[perm]) - spatial_similarity(a, b)) > 0.1
    assert semantic_similarity(a, a[perm]) == pytest.approx(1.0)
    assert semantic_similarity(a, b) >= spatial_similarity(a, b)


def test_optimal_matching_is_the_brute_force_optimum_and_greedy_is_below():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
        brute = max(spatial_similarity(a, b[list(p)]) for p in itertools.permutations(range(6)))
        assert semantic_similarity(a, b) == pytest.approx(brute, abs=1e-12)
        assert semantic_similarity(a, b, "greedy") <= brute + 1e-12
    assert sorted(best_matching(a, b).tolist()) == list(range(6))
    rows, cols = greedy_assignment(np.array([[5.0, 4.0], [4.0, 0.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1]  # greedy takes 5 then is left with 0 (optimum 8)


def _sequential_greedy(score: np.ndarray) -> dict[int, int]:
    """The greedy matching as its definition reads: the highest score whose row and column are free, one by one."""
    n, m = score.shape
    row_free, col_free, out = np.ones(n, bool), np.ones(m, bool), {}
    for flat in np.argsort(score, axis=None)[::-1]:
        r, c = divmod(int(flat), m)
        if row_free[r] and col_free[c]:
            row_free[r] = col_free[c] = False
            out[r] = c
    return out


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (7, 4), (4, 9), (60, 60)])
def test_greedy_in_rounds_is_the_sequential_greedy_matching(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(10):
        score = rng.normal(size=shape)
        rows, cols = greedy_assignment(score)
        assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == _sequential_greedy(score)
        assert len(set(cols.tolist())) == len(cols) == min(shape)
    rows, cols = greedy_assignment(np.ones((3, 3)))  # all tied: still a full matching
    assert sorted(cols.tolist()) == [0, 1, 2]


def test_rsm_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(2)
    x = rng.random((5, 9, 4))
    for invariant in (False, True):
        m = rsm(x, invariant)
        np.testing.assert_allclose(m, m.T)
        np.testing.assert_allclose(np.diag(m), 1.0)
    assert np.all(rsm(x, True) >= rsm(x, False) - 1e-12)


# ----------------------------------------------------------------------------- with a model


def _object(im: np.ndarray, y: int, x: int, tall: bool, level: int) -> None:
    h, w = (12, 4) if tall else (4, 12)
    im[y:y + h, x:x + w] = level


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """Images of one bar (tall or wide) at random places, and a bright square in the image's corner."""
    root = tmp_path_factory.mktemp("picat")
    model = root / "tiny.pt"
    save_model(controlled_model(), model)
    rng = np.random.default_rng(4)
    (root / "images").mkdir()
    for i in range(16):
        im = np.zeros((28, 28), np.uint8)
        _object(im, int(rng.integers(1, 14)), int(rng.integers(1, 14)), bool(i % 2), int(rng.integers(170, 256)))
        Image.fromarray(im).save(root / "images" / f"{i:02d}.png")
    index_source(str(root / "images"), root / "cat", model, IndexOptions(workers=0))
    build(Catalog.open(root / "cat"), BuildConfig(retain=1.0))
    return root / "cat"


def test_responses_of_a_flipped_image_match_after_permutation(catalog, tmp_path):
    """Flipping an image left-right permutes its response's cells (up to the windows' rounding): the
    semantic similarity to the original stays near 1 while the spatial one drops."""
    s = Searcher.open(catalog)
    src = s.metadata(np.array([3]), ["source"]).column("source")[0].as_py()
    with Image.open(src) as f:
        im = np.asarray(f)
    flipped = tmp_path / "flipped.png"
    Image.fromarray(np.ascontiguousarray(im[:, ::-1])).save(flipped)
    rows = [{"source": src, "component": 0}, {"source": str(flipped), "component": 0}]
    a, b = responses(s.catalog, rows, layer=0, grid=0)  # every position of C11's whole map
    assert semantic_similarity(a, b) > 0.99 > spatial_similarity(a, b)


def test_rerank_orders_by_semantic_similarity(catalog):
    s = Searcher.open(catalog)
    hits = s.search(ids=[1], k=16)
    rows = s.metadata(np.array([1]), ["source", "component"]).to_pylist()
    out = permutation_rerank(s, hits, rows, k=5).to_pylist()
    assert [r["rank"] for r in out] == [1, 2, 3, 4, 5]
    sem = [r["semantic"] for r in out]
    assert sem == sorted(sem, reverse=True) and out[0]["object_id"] == 1 and sem[0] == pytest.approx(1.0, abs=1e-5)
    assert all(r["semantic"] >= r["spatial"] - 1e-5 for r in out)


def test_cli_query_permutation_invariant_and_rsm(catalog, tmp_path):
    out = CliRunner().invoke(cli_main, ["query", "-c", str(catalog), "2", "-k", "4", "--permutation-invariant",
                                        "--pi-layer", "C21", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert len(rows) == 4 and rows[0]["object_id"] == 2 and "semantic" in rows[0] and "spatial" in rows[0]
    bad = CliRunner().invoke(cli_main, ["query", "-c", str(catalog), "2", "--permutation-invariant", "--pi-layer", "X"])
    assert bad.exit_code != 0 and "no layer 'X'" in bad.output and "Traceback" not in bad.output
    res = CliRunner().invoke(cli_main, ["rsm", "-c", str(catalog), "0", "1", "2", "3", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    sem = np.load(tmp_path / "r" / "semantic.npy")
    spa = np.loadtxt(tmp_path / "r" / "spatio_semantic.csv", delimiter=",", skiprows=1, usecols=range(1, 5))
    assert sem.shape == spa.shape == (4, 4) and np.all(sem >= spa - 1e-5)
    with Image.open(tmp_path / "r" / "rsm.png") as pic:
        assert pic.size[0] > 50
