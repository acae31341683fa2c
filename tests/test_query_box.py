"""Query by a region of an image (`simdex query --image F --box x0,y0,x1,y1`)."""

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
from simdex.indexer.checkpoint import save_model
from simdex.indexer.query_features import QueryImageError, box_on_canvas, image_features, parse_box
from simdex.indexer.runner import IndexOptions, index_source
from synth import controlled_model


@pytest.fixture(scope="module")
def catalog_and_images(tmp_path_factory) -> tuple[Path, list[Path], list[tuple]]:
    """12 images of two rectangles each: a big bright one on the left, a small dimmer one on the right."""
    root = tmp_path_factory.mktemp("boxcat")
    model = root / "tiny.pt"
    save_model(controlled_model(), model)
    rng = np.random.default_rng(5)
    paths, small_boxes = [], []
    (root / "images").mkdir()
    for i in range(12):
        im = np.zeros((28, 28), np.uint8)
        y, h = rng.integers(2, 8), rng.integers(12, 20)
        im[y:y + h, 1:12] = rng.integers(200, 256)
        sy, sx = rng.integers(2, 20), rng.integers(16, 22)
        im[sy:sy + 5, sx:sx + 5] = rng.integers(140, 190)
        small_boxes.append((int(sx), int(sy), int(sx) + 5, int(sy) + 5))
        paths.append(root / "images" / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    index_source(str(root / "images"), root / "cat", model, IndexOptions(workers=0))
    build(Catalog.open(root / "cat"), BuildConfig(retain=1.0))
    return root / "cat", paths, small_boxes


def test_box_of_the_object_equals_the_segmented_object(catalog_and_images):
    cat, paths, _ = catalog_and_images
    catalog = Catalog.open(cat)
    with Image.open(paths[0]) as f:
        big = np.asarray(f) >= 200
    ys, xs = np.nonzero(big)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    np.testing.assert_allclose(image_features(catalog, [paths[0]], boxes=[box]), image_features(catalog, [paths[0]]),
                               atol=1e-6)


def test_query_by_the_small_region_differs_and_finds_its_image(catalog_and_images):
    cat, paths, small = catalog_and_images
    catalog = Catalog.open(cat)
    whole = image_features(catalog, [paths[3]])
    region = image_features(catalog, [paths[3]], boxes=[small[3]])
    assert np.abs(whole - region).max() > 1e-3
    out = CliRunner().invoke(cli_main, ["query", "-c", str(cat), "--image", str(paths[3]), "--box",
                                        ",".join(map(str, small[3])), "-k", "3", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert len(rows) == 3 and all(0 <= r["score"] <= 1 for r in rows)


def test_box_maths():
    assert parse_box(" 1, 2,3 ,4") == (1, 2, 3, 4)
    assert box_on_canvas((0, 0, 28, 28), (28, 28, 1.0, 2, 2), 32) == (2, 2, 30, 30)
    assert box_on_canvas((0, 0, 1, 1), (100, 100, 0.32, 0, 0), 32) == (0, 0, 1, 1)  # at least one pixel
    assert box_on_canvas((10, 10, 20, 30), (100, 50, 0.32, 0, 8), 32) == (11, 3, 15, 10)
    for bad in ("1,2,3", "a,b,c,d", "5,5,5,9", "-1,0,4,4", "4,4,2,9"):
        with pytest.raises(QueryImageError):
            parse_box(bad)
    with pytest.raises(QueryImageError, match="outside the image"):
        box_on_canvas((0, 0, 29, 10), (28, 28, 1.0, 2, 2), 32)


@pytest.mark.parametrize("args, words", [
    (["--box", "1,2,3"], "four integers"),
    (["--box", "0,0,40,10"], "outside the image"),
    (["--box", "6,1,3,9"], "empty"),
    (["--box", "0,0,4,4", "--image", "SECOND"], "one --image"),
])
def test_bad_boxes_are_one_line_errors(catalog_and_images, args, words):
    cat, paths, _ = catalog_and_images
    args = [str(paths[1]) if a == "SECOND" else a for a in args]
    out = CliRunner().invoke(cli_main, ["query", "-c", str(cat), "--image", str(paths[0]), *args])
    assert out.exit_code != 0 and words in out.output and "Traceback" not in out.output, out.output


def test_box_without_image_is_refused(catalog_and_images):
    cat, _, _ = catalog_and_images
    out = CliRunner().invoke(cli_main, ["query", "-c", str(cat), "0", "--box", "0,0,4,4"])
    assert out.exit_code != 0 and "one --image" in out.output
