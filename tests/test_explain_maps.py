"""Similarity maps: the maths (engine.simmap) and the whole path (re-run model → maps that sum to P)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import Catalog
from simdex.engine.searcher import Searcher
from simdex.engine.simmap import (
    EntryLayout,
    area_matrix,
    entry_maps,
    feature_terms,
    pixel_map,
    position_shares,
    split_terms,
    to_pixels,
)
from simdex.explain_maps import explain_pair
from simdex.indexer.checkpoint import save_model
from simdex.indexer.runner import IndexOptions, index_source
from synth import controlled_model


def test_shares_sum_to_one_and_silent_channels_follow_the_window():
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(5, 4, 6)), 0)
    acts[2] = 0  # silent everywhere
    window = np.zeros((4, 6))
    window[1:3, 2:5] = 1 / 6
    acts[3, 1:3, 2:5] = 0  # silent inside the window only
    s = position_shares(acts, window)
    np.testing.assert_allclose(s.sum(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(s[2], window)
    np.testing.assert_allclose(s[3], window)
    assert np.all(s[:, window == 0] == 0)  # nothing outside the window
    # a share is the position's part of the window mean x = Σ_p w_p a_p
    x = (acts[0] * window).sum()
    np.testing.assert_allclose(s[0] * x, acts[0] * window)


@pytest.mark.parametrize("h, H", [(4, 32), (8, 32), (5, 32), (7, 3)])
def test_to_pixels_keeps_the_sum(h, H):
    m = np.random.default_rng(h).random((h, h + 1))
    px = to_pixels(m, (H, H + 2))
    assert px.shape == (H, H + 2)
    assert px.sum() == pytest.approx(m.sum(), rel=1e-12)
    np.testing.assert_allclose(area_matrix(h, H).sum(axis=0), 1.0)


def test_entry_maps_sum_to_p_with_grid_cells():
    rng = np.random.default_rng(1)
    # two layers (3 and 2 channels) at 8×8 and 4×4, each in 2 cells → 4 φ entries
    phi, offset = [], 0
    for name, ch in (("C1", 3), ("C2", 2)):
        for cell in ("@00", "@01"):
            phi.append({"name": name + cell, "channels": ch, "offset": offset})
            offset += ch
    kept = np.array([0, 2, 3, 5, 6, 8, 9])
    layout = EntryLayout.from_phi(kept, phi, cells=2)
    assert layout.entry.tolist() == [0, 0, 1, 1, 2, 3, 3] and layout.channel.tolist() == [0, 2, 0, 2, 0, 0, 1]
    acts = [np.maximum(rng.normal(size=(3, 8, 8)), 0), np.maximum(rng.normal(size=(2, 4, 4)), 0)]
    windows = []
    for hw in (8, 4):
        for half in (0, 1):
            w = np.zeros((hw, hw))
            w[:, half * hw // 2:(half + 1) * hw // 2] = 1
            windows.append(w / w.sum())
    terms = feature_terms(rng.random(7), rng.random(7))
    maps = entry_maps(terms, layout, acts, windows)
    assert sum(m.sum() for m in maps.values()) == pytest.approx(terms.sum(), abs=1e-12)
    assert pixel_map(maps, (32, 32)).sum() == pytest.approx(terms.sum(), abs=1e-12)
    np.testing.assert_allclose(split_terms(terms[:2], layout.channel[:2], acts[0], windows[0]), maps[0])


# ----------------------------------------------------------------------------- the whole path


def blob(rng, size=28) -> np.ndarray:
    im = np.zeros((size, size), np.uint8)
    x0, y0 = rng.integers(2, 14, 2)
    w, h = rng.integers(5, 12, 2)
    im[y0:y0 + h, x0:x0 + w] = rng.integers(160, 256)
    return im


@pytest.fixture(scope="module", params=["bbox", "grid2", "mask+grid2"])
def image_catalog(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"explain-{request.param}")
    model = root / "tiny.pt"
    save_model(controlled_model(), model)
    images = root / "images"
    rng = np.random.default_rng(3)
    for label in ("wide", "tall"):
        (images / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(blob(rng)).save(images / label / f"{i}.png")
    index_source(str(images), root / "cat", model, IndexOptions(workers=0, region=request.param))
    build(Catalog.open(root / "cat"), BuildConfig(retain=1.0))
    return root / "cat"


@pytest.mark.parametrize("queries, membership", [([0], "gaussian"), ([0], "triangle"), ([0, 5], "trapezoid"),
                                                 ([0, 5], "triangle"), ([0, 5], "max")])
def test_every_map_sums_to_the_p_of_the_search(image_catalog, queries, membership):
    s = Searcher.open(image_catalog)
    answer = 9
    hits = s.search(ids=queries, k=len(s.object_ids), membership=membership, exact=True).to_pylist()
    p = next(h["score"] for h in hits if h["object_id"] == answer)
    e = explain_pair(s, queries, answer, membership=membership)
    assert e.P == pytest.approx(p, abs=1e-5)
    assert sum(e.layer_parts.values()) == pytest.approx(e.P, abs=1e-9)
    assert [im.object_id for im in e.images] == queries + [answer]
    for im in e.images:
        assert im.pixel_map.sum() == pytest.approx(e.P, abs=1e-5)
        assert sum(m.sum() for m in im.layer_maps.values()) == pytest.approx(e.P, abs=1e-5)
        for name, part in e.layer_parts.items():
            assert im.layer_maps[name].sum() == pytest.approx(part, abs=1e-6)
        assert im.pixel_map.min() >= 0
        assert im.z_error < 1e-3  # the re-run gives the stored features


def test_map_lies_on_the_object(image_catalog):
    """All of P sits in the object's windows: its box grown by at most the coarsest layer's cell (8 pixels)."""
    s = Searcher.open(image_catalog)
    e = explain_pair(s, [1], 2)
    for im in e.images:
        x0, y0, x1, y1 = im.box
        inside = im.pixel_map[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8].sum()
        assert inside == pytest.approx(e.P, abs=1e-6)
        assert im.pixel_map[y0:y1, x0:x1].sum() > 0


def test_cli_json_and_picture(image_catalog, tmp_path):
    png, js = tmp_path / "map.png", tmp_path / "map.json"
    out = CliRunner().invoke(cli_main, ["explain", "-c", str(image_catalog), "3", "4", "--out", str(png),
                                        "--format", "json", "-o", str(js)])
    assert out.exit_code == 0, out.output
    d = json.loads(js.read_text())
    assert d["query"] == [3] and d["answer"] == 4
    for im in d["images"]:
        assert np.asarray(im["map"]).sum() == pytest.approx(d["P"], abs=1e-5)
        assert sum(np.asarray(m).sum() for m in im["layer_maps"].values()) == pytest.approx(d["P"], abs=1e-5)
    with Image.open(png) as f:
        pic = np.asarray(f)
    assert pic.shape[0] > 100 and pic.std() > 0
    table = CliRunner().invoke(cli_main, ["explain", "-c", str(image_catalog), "3", "4"])
    assert table.exit_code == 0 and f"{d['P']:.4f}" in table.output and "C11" in table.output


def test_cli_errors_are_one_line(image_catalog):
    for args, words in ((["3"], "answer"), (["3", "99999"], "no object 99999"),
                        (["3", "5", "4", "--membership", "gaussian"], "one query")):
        out = CliRunner().invoke(cli_main, ["explain", "-c", str(image_catalog), *args])
        assert out.exit_code != 0 and words in out.output and "Traceback" not in out.output, out.output


def test_report_shows_the_similarity_map_of_an_example(image_catalog, tmp_path):
    from simdex.report import Example, write_report

    s = Searcher.open(image_catalog)
    hits = s.search(ids=[2], k=5)
    index = write_report(tmp_path / "report", s, [Example("query 2", [2], "gaussian", hits)])
    html = index.read_text()
    answer = next(i for i in hits.column("object_id").to_pylist() if i != 2)
    e = explain_pair(s, [2], answer)
    assert "Where similarity comes from" in html and f"best answer {answer}" in html
    assert f"P = {e.P:.4f}" in html and f"here {e.P:.4f} and {e.P:.4f}" in html  # both maps sum to P
    with Image.open(tmp_path / "report" / "explain_map.png") as f:
        assert f.size[0] > 200 and np.asarray(f).std() > 0


def test_report_says_why_when_an_image_is_gone(tmp_path):
    from simdex.report import Example, write_report

    model = tmp_path / "tiny.pt"
    save_model(controlled_model(), model)
    rng = np.random.default_rng(8)
    (tmp_path / "images").mkdir()
    for i in range(5):
        Image.fromarray(blob(rng)).save(tmp_path / "images" / f"{i}.png")
    index_source(str(tmp_path / "images"), tmp_path / "cat", model, IndexOptions(workers=0))
    build(Catalog.open(tmp_path / "cat"), BuildConfig(retain=1.0))
    s = Searcher.open(tmp_path / "cat")
    hits = s.search(ids=[0], k=3)
    for p in (tmp_path / "images").iterdir():
        p.unlink()
    html = write_report(tmp_path / "report", s, [Example("query 0", [0], "gaussian", hits)]).read_text()
    assert "No similarity map: cannot read the image of object" in html
    assert not (tmp_path / "report" / "explain_map.png").exists()
