"""The scenes benchmark: deterministic, masks from the compositing, no item in both splits,
readable as a source by `simdex index`/`train`; the inverted Fashion-MNIST source."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main
from simdex.indexer.scenes import ScenesConfig, draw_shape, make_background, write_scenes
from simdex.indexer.sources import SourceError, open_source
from synth import fashion_like_folder

SMALL = ScenesConfig(train_items=12, train_copies=2, plain_fmnist=4, test_items=6, test_copies=3, seed=3)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fm")
    fashion_like_folder(folder, train=40, test=20)
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("scenes")
    summary = write_scenes(out, SMALL, fmnist_folder=fmnist)
    return out, summary


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sizes_splits_and_labels(scenes):
    out, summary = scenes
    train, test = _rows(out / "train.csv"), _rows(out / "test.csv")
    assert summary["train_images"] == len(train) == 12 * 2 + 4
    assert summary["test_images"] == len(test) == 6 * 3
    assert {r["split"] for r in train} == {"train"}
    assert [r["split"] for r in test].count("query") == 6  # one query copy per held-out item
    train_items = {r["instance"] for r in train if r["kind"] == "scene"}
    test_items = {r["instance"] for r in test}
    assert not train_items & test_items, "an item is in both splits"
    assert any(r["label"].startswith("shape:") for r in train)  # drawn shapes beside the items
    for r in train + test:
        assert r["items"].split(";")[0] == r["instance"]  # the primary item is listed first


def test_masks_are_the_compositing(scenes):
    out, _ = scenes
    for r in _rows(out / "train.csv")[:10] + _rows(out / "test.csv"):
        image = np.asarray(Image.open(out / r["path"]), np.int16)
        mask = np.asarray(Image.open(out / r["mask"]))
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        ids = sorted(int(v) for v in np.unique(mask) if v)
        assert ids[0] == 1 and len(ids) == int(r["objects"]) == len(r["items"].split(";"))
        assert (mask == 1).sum() >= 20  # the primary item is on top and visible


def test_deterministic_for_a_seed(scenes, fmnist, tmp_path):
    out, _ = scenes
    write_scenes(tmp_path, SMALL, fmnist_folder=fmnist)
    assert (tmp_path / "test.csv").read_bytes() == (out / "test.csv").read_bytes()
    for name in ("train/000005.png", "test/000007.png", "test/masks/000007.png"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    other = ScenesConfig(**{**SMALL.__dict__, "seed": 4})
    write_scenes(tmp_path / "b", other, fmnist_folder=fmnist)
    assert (tmp_path / "b" / "test/000007.png").read_bytes() != (out / "test/000007.png").read_bytes()


def test_backgrounds_and_shapes_are_drawn():
    rng = np.random.default_rng(0)
    for kind in ("white", "black", "solid", "gradient", "noise", "texture"):
        bg = make_background(kind, 64, rng)
        assert bg.shape == (64, 64, 3) and bg.min() >= 0 and bg.max() <= 1
    assert make_background("texture", 64, rng).std() > 0.01  # two colours, not one
    for kind in ("ellipse", "polygon", "star", "ring", "cross"):
        alpha, shade = draw_shape(kind, rng)
        assert alpha.shape == (28, 28) and 0.05 < alpha.mean() < 0.9
    ring_alpha, _ = draw_shape("ring", np.random.default_rng(1))
    assert ring_alpha[14, 14] < 0.5  # a ring has a hole


def test_a_scenes_source_reads_images_and_masks(scenes, monkeypatch):
    out, _ = scenes
    monkeypatch.setenv("SIMDEX_SCENES", str(out))
    src = open_source("fashion-mnist-scenes:test")
    assert len(src) == 18 and src.records[0].metadata["split"] == "query"
    image = src.read(0, 3)
    assert image.shape == (3, 64, 64)
    mask = src.read_mask(0, image)
    assert mask.shape == (64, 64) and mask.any()
    both = open_source("fashion-mnist-scenes")
    assert len(both) == 28 + 18 and [r.ordinal for r in both.records] == list(range(46))


def test_missing_scenes_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMDEX_SCENES", str(tmp_path / "none"))
    with pytest.raises(SourceError, match="simdex scenes --out"):
        open_source("fashion-mnist-scenes:train")


def test_inverted_fashion_mnist(fmnist, monkeypatch):
    monkeypatch.setenv("SIMDEX_FASHION_MNIST", str(fmnist))
    plain, inverted = open_source("fashion-mnist:test"), open_source("fashion-mnist:test:inverted")
    assert len(plain) == len(inverted) == 20
    np.testing.assert_allclose(inverted.read(3, 3), 1.0 - plain.read(3, 3))


def test_cli(fmnist, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMDEX_FASHION_MNIST", str(fmnist))
    runner = CliRunner()
    res = runner.invoke(main, ["scenes", "--out", str(tmp_path / "s"), "--train-items", "5", "--plain", "2",
                               "--test-items", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Wrote 22 training images (5 items) and 12 test images (3 items)" in res.output
    res = runner.invoke(main, ["scenes", "--out", str(tmp_path / "t"), "--size", "60"])
    assert res.exit_code != 0 and "divisible by 8" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["scenes", "--out", str(tmp_path / "u"), "--train-items", "100000"])
    assert res.exit_code == 1 and res.output.startswith("Error: ")


def test_a_split_of_one_item(fmnist, tmp_path):
    """A split with fewer items than the distractors a scene draws (here one) still writes every scene."""
    summary = write_scenes(tmp_path, ScenesConfig(train_items=1, train_copies=6, plain_fmnist=0, test_items=1,
                                                  test_copies=6, seed=5), fmnist_folder=fmnist)
    rows = _rows(tmp_path / "test.csv")
    assert len(rows) == 6 and {r["objects"] for r in rows} == {"1"}, summary
    assert len(_rows(tmp_path / "train.csv")) == 6
