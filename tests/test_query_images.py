"""End to end with the real indexer and a tiny model: index → build → query by image, and the contact sheet."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import Catalog
from simdex.engine.searcher import Searcher
from simdex.indexer.checkpoint import save_model
from simdex.indexer.runner import IndexOptions, index_source
from simdex.sheet import read_catalog_image
from synth import controlled_model


def blob(rng, size=28) -> np.ndarray:
    im = np.zeros((size, size), np.uint8)
    x0, y0 = rng.integers(2, 14, 2)
    w, h = rng.integers(5, 12, 2)
    im[y0 : y0 + h, x0 : x0 + w] = rng.integers(160, 256)
    return im


@pytest.fixture(scope="module")
def image_catalog(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("imgcat")
    model = root / "tiny.pt"
    save_model(controlled_model(), model)
    images = root / "images"
    rng = np.random.default_rng(0)
    for label in ("wide", "tall"):
        (images / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(blob(rng)).save(images / label / f"{i}.png")
    index_source(str(images), root / "cat", model, IndexOptions(workers=0))
    build(Catalog.open(root / "cat"), BuildConfig())
    return root / "cat", images


def test_query_by_image_finds_the_same_image(image_catalog):
    cat, images = image_catalog
    s = Searcher.open(cat)
    objects = s.catalog.read_objects(["object_id", "source"]).to_pylist()
    target = next(o for o in objects if o["source"].endswith("tall/3.png"))
    out = CliRunner().invoke(cli_main, ["query", "--catalog", str(cat), "--image", target["source"], "-k", "3",
                                        "--format", "json"])
    assert out.exit_code == 0, out.output
    first = json.loads(out.output.splitlines()[0])
    assert first["object_id"] == target["object_id"] and first["score"] == pytest.approx(1.0, abs=1e-5)


def test_contact_sheet(image_catalog, tmp_path):
    cat, _ = image_catalog
    sheet = tmp_path / "sheet.png"
    out = CliRunner().invoke(cli_main, ["query", "--catalog", str(cat), "0", "-k", "4", "--sheet", str(sheet)])
    assert out.exit_code == 0, out.output
    im = Image.open(sheet)
    assert im.size[0] > 0 and im.size[1] > 0 and np.asarray(im).std() > 0


def test_contact_sheet_with_a_source_image_gone(image_catalog, tmp_path):
    cat, _ = image_catalog
    source = Path(Searcher.open(cat).metadata(np.array([0]), ["source"]).column("source")[0].as_py())
    hidden = source.with_name(source.name + ".away")
    source.rename(hidden)
    try:
        sheet = tmp_path / "sheet.png"
        out = CliRunner().invoke(cli_main, ["query", "--catalog", str(cat), "0", "-k", "4", "--sheet", str(sheet)])
    finally:
        hidden.rename(source)
    assert out.exit_code == 0, out.output
    assert "Traceback" not in out.output and "could not be read" in out.output and str(source) in out.output
    with Image.open(sheet) as im:
        assert im.size[0] > 0
    # a sheet that cannot be written is one line, not a traceback
    out = CliRunner().invoke(cli_main, ["query", "--catalog", str(cat), "0", "--sheet", str(tmp_path / "no" / "s.png")])
    assert out.exit_code == 1 and out.output.count("\n") <= 12 and "cannot write the contact sheet" in out.output


def test_read_catalog_image_from_idx(tmp_path):
    images = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.tobytes())
    rgb = read_catalog_image(f"{path}#1")
    assert rgb.shape == (4, 5, 3)
    np.testing.assert_array_equal(rgb[..., 0], images[1])


def test_large_jpegs_decode_reduced_and_give_one_vector_per_file(tmp_path):
    """A JPEG at least twice the model's input decodes at a fraction of its size (DCT scaling) on
    every path that makes features: the index job, a query by the file, and the object's box is in
    the stored image's pixels."""
    from simdex.indexer.query_features import image_features
    from simdex.indexer.sources import decode_image, decode_image_for

    rng = np.random.default_rng(4)
    images = tmp_path / "photos"
    images.mkdir()
    boxes = {}
    for i in range(6):
        im = np.zeros((180, 256), np.uint8)  # 256×180: decoded at 1/4 for a 32×32 model (64×45)
        x0, y0 = int(rng.integers(10, 120)), int(rng.integers(10, 80))
        im[y0:y0 + 80, x0:x0 + 100] = 220
        Image.fromarray(im).save(images / f"{i}.jpg", quality=95)
        boxes[f"{i}.jpg"] = (x0, y0, x0 + 100, y0 + 80)
    reduced, shown = decode_image_for(images / "0.jpg", 1, 32)
    assert shown == (180, 256) and reduced.shape == (1, 45, 64)
    assert decode_image(images / "0.jpg").shape == (1, 180, 256)  # without a size: as stored
    model = tmp_path / "tiny.pt"
    save_model(controlled_model(), model)
    index_source(str(images), tmp_path / "cat", model, IndexOptions(workers=0))
    build(Catalog.open(tmp_path / "cat"), BuildConfig())
    s = Searcher.open(tmp_path / "cat")
    rows = s.catalog.read_objects(["object_id", "source", "x0", "y0", "x1", "y1"]).to_pylist()
    assert len(rows) == 6
    for row in rows:
        want = boxes[Path(row["source"]).name]
        got = (row["x0"], row["y0"], row["x1"], row["y1"])
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 8  # one canvas pixel is 8 stored ones
    target = rows[2]
    x = image_features(s.catalog, [Path(target["source"])])
    ids, stored = next(s.catalog.iter_features())
    np.testing.assert_allclose(x[0], stored[ids.tolist().index(target["object_id"])], rtol=0, atol=1e-6)
