"""Augmented views and the self-supervised Ω learned from them (`simdex index --views`, indexer/views.py)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from synth_catalog import append_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, BuildError, build
from simdex.engine.catalog import Catalog
from simdex.engine.integrity import DamagedFileError
from simdex.engine.searcher import Searcher
from simdex.indexer.checkpoint import save_model
from synth import blob_images, controlled_model

N, STABLE = 20, [0, 1, 2, 3]


def unlabelled_catalog(root, with_views: bool = True, seed: int = 0) -> Catalog:
    """Objects without labels, and views of 150 images in which features 0–3 stay what they are in
    both views while every other feature changes at random (pose and colour)."""
    rng = np.random.default_rng(seed)
    cat = new_catalog(root, [("C11", 10, 1), ("C21", 10, 2)])
    append_objects(cat, rng.gamma(2.0, 1.0, (300, N)).astype(np.float32), [None] * 300, "objs", split=None)
    if with_views:
        base = rng.gamma(2.0, 1.0, (150, N))
        views = np.repeat(base, 2, axis=0)
        views[:, 4:] = rng.gamma(2.0, 1.0, (300, N - 4))
        views[:, STABLE] += rng.normal(0, 0.05, (300, 4))
        cat.write_views("objs", np.repeat(np.arange(150), 2), np.maximum(views, 0).astype(np.float32))
    return cat


def test_views_round_trip_and_damage(tmp_path):
    cat = unlabelled_catalog(tmp_path / "c")
    groups, x = cat.read_views()
    assert x.shape == (300, N) and len(np.unique(groups)) == 150 and np.bincount(groups).max() == 2
    with pytest.raises(Exception, match="views must be"):
        cat.write_views("other", np.zeros(3, np.int64), np.zeros((3, N + 1), np.float32))
    assert not list((cat.root / "views").glob(".*.tmp"))
    cat.views_path("objs").write_bytes(b"not parquet")
    with pytest.raises(DamagedFileError, match="unreadable views"):
        cat.read_views()
    with pytest.raises(BuildError, match="views"):
        build(cat)


def test_build_learns_omega_from_views_without_labels(tmp_path):
    result = build(unlabelled_catalog(tmp_path / "c"))
    record = result.info["omega"]
    assert record["estimator"] == "learned" and record["views"] == {"views": 300, "images": 150}
    assert "augmented views" in record["choice"] and record["learned"]["sample_drawn"] == "all"
    s = Searcher.open(result.path.parent.parent)
    stable = np.isin(s.kept, STABLE)
    assert s.omega[stable].sum() > 2 * stable.mean()  # what the views keep is weighted up
    plain = build(unlabelled_catalog(tmp_path / "p", with_views=False))
    assert plain.info["omega"]["estimator"] == "uniform"
    with pytest.raises(BuildError, match="--views"):
        build(unlabelled_catalog(tmp_path / "q", with_views=False), BuildConfig(omega="learned"))


def test_index_writes_views_for_a_source_without_labels(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(blob_images(12, size=32, seed=3)):
        Image.fromarray((img[0] * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    model = tmp_path / "tiny.pt"
    save_model(controlled_model(), model)
    runner = CliRunner()
    cat = tmp_path / "cat"
    out = runner.invoke(cli_main, ["index", str(folder), "--catalog", str(cat), "--model", str(model),
                                   "--views", "8", "--workers", "0"])
    assert out.exit_code == 0, out.output
    assert "Views: " in out.output
    groups, x = Catalog.open(cat).read_views()
    assert 2 <= len(groups) <= 16 and len(groups) % 2 == 0 and x.shape[1] == Catalog.open(cat).num_features
    before = Catalog.open(cat).views_path(Catalog.open(cat).journals()[0]["job_id"]).stat().st_mtime_ns
    out = runner.invoke(cli_main, ["index", str(folder), "--catalog", str(cat), "--model", str(model), "--views", "8"])
    assert out.exit_code == 0 and "Views: " not in out.output  # written once per job
    assert Catalog.open(cat).views_path(Catalog.open(cat).journals()[0]["job_id"]).stat().st_mtime_ns == before
    out = runner.invoke(cli_main, ["index", str(folder), "--catalog", str(cat), "--views", "many"])
    assert out.exit_code == 2 and "neither a number" in out.output
