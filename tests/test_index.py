"""The bulk indexer end to end: catalog layout, rows, bad files, resume after SIGKILL, CLI.

The model is a tiny U-Net whose segmentation the tests control: one channel of
C11 → C12 → C91 → C92 passes the input through unchanged, and the head calls a pixel
foreground when it is brighter than 0.5. Every other weight is Xavier-random (seeded),
so the features are real activations of the real network.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main as cli_main
from simdex.engine.catalog import Catalog, CatalogError
from simdex.indexer.checkpoint import load_model, save_model
from simdex.indexer.runner import IndexOptions, index_source
from synth import controlled_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(controlled_model(), path)
    return path


def rect_image(h: int, w: int, boxes, value: int = 220) -> np.ndarray:
    """uint8 (h, w), black with bright rectangles (x0, y0, x1, y1), half-open."""
    im = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1 in boxes:
        im[y0:y1, x0:x1] = value
    return im


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.astype(np.uint8).tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels))
                                                     + labels.astype(np.uint8).tobytes())
    return path


def random_idx_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28×28 images with 1–3 bright rectangles (some touching), a few blank ones."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        if i % 17 == 5:
            continue  # blank: no object
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, 24, 2)
            x1, y1 = x0 + rng.integers(2, 9), y0 + rng.integers(2, 9)
            images[i, y0:y1, x0:x1] = rng.integers(150, 256)
    return images, rng.integers(0, 10, n)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w×h pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- rows


def test_index_folder_rows(tmp_path, model_file):
    src = tmp_path / "imgs"
    (src / "boots").mkdir(parents=True)
    (src / "bags").mkdir()
    # 20×24 fits the 32×32 canvas unscaled, so boxes come back exactly.
    truth = {}
    for i in range(6):
        boxes = [(2 + i, 3, 9 + i, 12), (14, 14, 22, 18)]
        Image.fromarray(rect_image(20, 24, boxes)).save(src / "boots" / f"{i}.png")
        truth[f"boots/{i}.png"] = boxes
    # 64×48 is scaled by 0.5 into the canvas: boxes come back rounded outward, within 2 pixels.
    Image.fromarray(rect_image(64, 48, [(8, 16, 40, 48)])).save(src / "bags" / "big.png")
    truth["bags/big.png"] = [(8, 16, 40, 48)]

    cat_dir = tmp_path / "cat"
    res = index_source(src, cat_dir, model_file, IndexOptions(objects="all", batch_size=4, shard_images=4))
    assert (res.images, res.objects, sum(res.errors.values())) == (7, 13, 0)

    cat = Catalog.open(cat_dir)
    loaded = load_model(model_file)
    assert cat.model_sha256 == loaded.sha256
    assert cat.info["region"] == "mask+grid2"  # the default region: the mask, then its four cells, per layer
    assert [p["name"] for p in cat.phi[:6]] == ["C11@m", "C11@00", "C11@01", "C11@10", "C11@11", "C12@m"]
    assert cat.phi[::5] == [{**vars(s), "name": f"{s.name}@m", "offset": 5 * s.offset} for s in loaded.model.phi]
    assert cat.num_features == 5 * loaded.model.num_features == cat.phi[-1]["offset"] + cat.phi[-1]["channels"]
    assert len(cat.shard_paths()) == 2  # shards of 4 images, then 3
    assert cat.num_objects == 13 and cat.num_images == 7

    schema = pq.read_schema(cat.shard_paths()[0])
    assert schema.field("features").type == pa.list_(pa.float32(), cat.num_features)
    table = cat.read_objects()
    assert "features" not in table.column_names
    rows = table.to_pylist()
    assert [r["object_id"] for r in rows] == list(range(13))
    assert sorted({r["image_id"] for r in rows}) == list(range(7))
    for r in rows:
        rel = str(Path(r["source"]).relative_to(src))
        assert r["label"] == rel.split("/")[0]
        box = (r["x0"], r["y0"], r["x1"], r["y1"])
        expected = truth[rel][r["component"]]
        if rel.startswith("boots"):
            assert box == expected
            assert r["area"] == (expected[2] - expected[0]) * (expected[3] - expected[1])
        else:
            assert all(abs(a - b) <= 2 for a, b in zip(box, expected, strict=True))
            assert abs(r["area"] - 32 * 32) <= 200

    ids, feats = zip(*cat.iter_features(batch_rows=5), strict=True)
    ids, feats = np.concatenate(ids), np.concatenate(feats)
    assert ids.tolist() == list(range(13)) and feats.shape == (13, cat.num_features)
    assert feats.dtype == np.float32 and np.isfinite(feats).all() and (feats >= 0).all()
    # Different objects of one image have different features; the first layer's channel 0 is the
    # input itself, so its mean over the box is the rectangle's brightness.
    boot = next(i for i, r in enumerate(rows) if "boots" in r["source"])
    assert not np.allclose(feats[boot], feats[boot + 1])
    np.testing.assert_allclose(feats[boot, 0], 220 / 255, atol=1e-5)


def test_largest_mode_and_metadata_from_a_list(tmp_path, model_file):
    rows = []
    for i in range(5):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rect_image(32, 32, [(1, 1, 5, 5), (10, 10, 20, 22 - i)])).save(path)
        rows.append({"path": path.name, "label": ["a", "b"][i % 2], "shop": f"s{i}", "price": 1.5 * i,
                     "object_id": i})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "list.parquet")
    index_source(tmp_path / "list.parquet", tmp_path / "cat", model_file, IndexOptions(region="mask"))
    cat = Catalog.open(tmp_path / "cat")
    t = cat.read_objects()
    assert t.num_rows == 5 and cat.region == "mask"
    assert t.column("component").to_pylist() == [0] * 5
    assert t.column("x0").to_pylist() == [10] * 5  # the larger rectangle
    assert t.column("shop").to_pylist() == [f"s{i}" for i in range(5)]
    assert t.column("price").type == pa.float64()
    assert t.column("meta_object_id").to_pylist() == list(range(5))  # a clashing name is renamed
    assert t.column("label").to_pylist() == ["a", "b", "a", "b", "a"]
    assert cat.read_objects(columns=["object_id", "shop"]).column_names == ["object_id", "shop"]


# ----------------------------------------------------------------------------- bad input


def test_bad_files_go_to_the_errors_table(tmp_path, model_file):
    src = tmp_path / "mixed"
    src.mkdir()
    good = rect_image(24, 24, [(4, 4, 16, 14)])
    rgb = np.stack([good] * 3, axis=-1)
    Image.fromarray(good).save(src / "grey.png")
    Image.fromarray(rgb).save(src / "rgb.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full_like(good, 255)]), "RGBA").save(src / "rgba.png")
    Image.fromarray(good).convert("P").save(src / "palette.png")
    Image.fromarray(good.astype(np.uint16) * 257).save(src / "grey16.png")
    Image.fromarray(rgb).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    Image.fromarray(good).convert("1").save(src / "bilevel.png")
    Image.fromarray(good.astype(np.float32) / 255).save(src / "float.tif")
    full = (src / "rgb.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(full[: len(full) // 2])
    png = (src / "grey.png").read_bytes()
    (src / "truncated.png").write_bytes(png[: len(png) // 2])
    (src / "zero.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    (src / "fake.jpg").write_bytes(b"GIF? no, just bytes" * 10)
    corrupt = bytearray(png)
    at = corrupt.find(b"IDAT")
    corrupt[at + 10:at + 20] = bytes(10)  # a broken compressed stream
    (src / "corrupt.png").write_bytes(bytes(corrupt))
    (src / "bomb.png").write_bytes(png_header_only(40_000, 40_000))
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(src / "blank.png")

    res = index_source(src, tmp_path / "cat", model_file, IndexOptions(batch_size=3, workers=1))
    cat = Catalog.open(tmp_path / "cat")
    errors = {Path(r["source"]).name: r["reason"] for r in cat.read_errors().to_pylist()}
    assert errors == {
        "truncated.jpg": "truncated", "truncated.png": "truncated", "zero.png": "empty_file",
        "notes.txt": "not_an_image", "fake.jpg": "not_an_image", "bomb.png": "too_large",
        "blank.png": "no_object", "corrupt.png": "decode_error",
    }
    objects = cat.read_objects().to_pylist()
    names = sorted(Path(r["source"]).name for r in objects)
    assert names == sorted(["grey.png", "rgb.jpg", "rgba.png", "palette.png", "grey16.png", "cmyk.jpg",
                            "bilevel.png", "float.tif"])
    for r in objects:  # every decodable variant finds the same rectangle
        assert (r["x0"], r["y0"], r["x1"], r["y1"]) == (4, 4, 16, 14), r["source"]
    # Every image: objects or exactly one error row; image ids dense.
    image_ids = sorted([r["image_id"] for r in objects] + cat.read_errors().column("image_id").to_pylist())
    assert image_ids == list(range(16))
    assert res.errors["no_object"] == 1 and sum(res.errors.values()) == 8


# ----------------------------------------------------------------------------- jobs


def test_rerun_append_and_refusals(tmp_path, model_file):
    images, labels = random_idx_images(40, seed=1)
    first = write_idx(tmp_path / "a", images, labels)
    second = write_idx(tmp_path / "b", images[:10], labels[:10])
    cat_dir = tmp_path / "cat"
    r1 = index_source(first, cat_dir, model_file, IndexOptions(shard_images=16, batch_size=8))
    assert r1.images == 40 and r1.objects == 40 - 3  # 3 blank images
    n = Catalog.open(cat_dir).num_objects

    again = index_source(first, cat_dir, model_file, IndexOptions(shard_images=16, batch_size=8))
    assert again.images == 0 and again.already_indexed == 40
    assert Catalog.open(cat_dir).num_objects == n

    r2 = index_source(second, cat_dir, model_file)
    cat = Catalog.open(cat_dir)
    assert r2.images == 10 and cat.num_objects == n + r2.objects
    ids = np.concatenate([i for i, _ in cat.iter_features()])
    assert ids.tolist() == list(range(cat.num_objects))
    assert len(cat.journals()) == 2

    other = tmp_path / "other.pt"
    save_model(controlled_model(seed=1), other)
    with pytest.raises(CatalogError, match="indexed with model"):
        index_source(second, cat_dir, other)
    with pytest.raises(CatalogError, match="region mode"):
        index_source(second, cat_dir, model_file, IndexOptions(region="full"))
    with pytest.raises(CatalogError, match="--objects largest"):
        index_source(first, cat_dir, model_file, IndexOptions(objects="all"))


def test_limit_then_continue_equals_one_run(tmp_path, model_file):
    images, labels = random_idx_images(30, seed=2)
    src = write_idx(tmp_path / "src", images, labels)
    opts = IndexOptions(objects="all", shard_images=8, batch_size=4)
    index_source(src, tmp_path / "one", model_file, opts)
    part = index_source(src, tmp_path / "two", model_file, IndexOptions(objects="all", shard_images=8, batch_size=4,
                                                                      limit=12))
    assert part.images == 12
    rest = index_source(src, tmp_path / "two", model_file, opts)
    assert rest.images == 18 and rest.already_indexed == 12
    assert_same_catalog(tmp_path / "one", tmp_path / "two")


def assert_same_catalog(a: Path, b: Path) -> None:
    ca, cb = Catalog.open(a), Catalog.open(b)
    ta, tb = ca.read_objects(), cb.read_objects()
    assert ta.equals(tb)
    fa = np.concatenate([f for _, f in ca.iter_features()])
    fb = np.concatenate([f for _, f in cb.iter_features()])
    # A resumed job cuts batches elsewhere, and oneDNN's channels_last kernels may sum in another
    # order for another batch size: the same features to float32 rounding, not bit for bit.
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
    assert ca.read_errors().equals(cb.read_errors())


DRIVER = textwrap.dedent("""
    import sys, time
    from simdex.indexer.runner import IndexOptions, index_source
    def slow(progress):  # keeps the job running long enough to be killed part way
        time.sleep(0.02)
    index_source(sys.argv[1], sys.argv[2], sys.argv[3],
                 IndexOptions(objects="all", shard_images=12, batch_size=4), progress=slow)
""")


def test_sigkill_and_resume_gives_one_row_per_object(tmp_path, model_file):
    images, labels = random_idx_images(150, seed=3)
    src = write_idx(tmp_path / "src", images, labels)
    reference = tmp_path / "reference"
    index_source(src, reference, model_file, IndexOptions(objects="all", shard_images=12, batch_size=4))

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cat_dir = tmp_path / "cat"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(1338)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(driver), str(src), str(cat_dir), str(model_file)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until the job is under way (its journal exists), then kill it at a random moment.
        deadline = time.monotonic() + 60
        while not list((cat_dir / "jobs").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        journal = json.loads(next((cat_dir / "jobs").glob("*.json")).read_text())
        if journal["next_ordinal"] == len(images):
            break
    assert kills >= 1
    final = subprocess.run([sys.executable, str(driver), str(src), str(cat_dir), str(model_file)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert_same_catalog(reference, cat_dir)
    cat = Catalog.open(cat_dir)
    t = cat.read_objects(["object_id", "ordinal", "component"]).to_pylist()
    assert [r["object_id"] for r in t] == list(range(len(t)))
    keys = [(r["ordinal"], r["component"]) for r in t]
    assert len(set(keys)) == len(keys)
    assert not [p for p in (cat_dir / "shards").iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- catalog


def test_catalog_builds_tombstones_and_orphans(tmp_path, model_file):
    images, labels = random_idx_images(20, seed=4)
    src = write_idx(tmp_path / "src", images, labels)
    index_source(src, tmp_path / "cat", model_file, IndexOptions(shard_images=8))
    cat = Catalog.open(tmp_path / "cat")
    assert cat.current_build_dir() is None and cat.current_version is None
    b = cat.new_build_dir()
    (b / "stats.json").write_text("{}")
    v1 = cat.publish_build(b)
    assert cat.current_version == v1 and (cat.current_build_dir() / "stats.json").is_file()
    v2 = cat.publish_build(cat.new_build_dir())
    assert v2 > v1 and Catalog.open(tmp_path / "cat").current_version == v2

    assert cat.add_deleted([3, 1, 3]) == 2
    assert cat.add_deleted(np.array([1, 5])) == 1
    assert Catalog.open(tmp_path / "cat").deleted_ids().tolist() == [1, 3, 5]
    with pytest.raises(CatalogError, match="no object with id"):
        cat.add_deleted([10_000])

    # A shard renamed into place by a job killed before its journal update is invisible, then removed.
    orphan = tmp_path / "cat" / "shards" / "000099.parquet"
    orphan.write_bytes(cat.shard_paths()[0].read_bytes())
    n = cat.num_objects
    assert orphan not in cat.shard_paths() and cat.num_objects == n
    with cat.lock():
        assert not orphan.exists()
        with pytest.raises(CatalogError, match="another job"):
            with Catalog.open(tmp_path / "cat").lock():
                pass


def test_catalog_open_errors(tmp_path):
    with pytest.raises(CatalogError, match="no catalog at"):
        Catalog.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(CatalogError, match="not a simdex catalog"):
        Catalog.open(tmp_path / "plain")
    info = {"sha256": "ab" * 32, "config": {}, "phi": [{"name": "C11", "channels": 2, "stride": 1, "offset": 0}],
            "num_features": 2, "region": "bbox"}
    with pytest.raises(CatalogError, match="not an empty folder"):
        Catalog.create(tmp_path / "plain", info)
    cat = Catalog.create(tmp_path / "new", info)
    assert cat.num_objects == 0 and cat.read_objects().num_rows == 0 and list(cat.iter_features()) == []
    assert Catalog.open_or_create(tmp_path / "new", info).info == cat.info


# ----------------------------------------------------------------------------- CLI


def test_cli_index(tmp_path, model_file):
    images, labels = random_idx_images(25, seed=5)
    src = write_idx(tmp_path / "src", images, labels)
    runner = CliRunner()
    cat_dir = tmp_path / "cat"
    res = runner.invoke(cli_main, ["index", str(src), "--catalog", str(cat_dir), "--model", str(model_file),
                                   "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "Indexed 25 images" in res.output and "no_object 2" in res.output
    assert "images/s" in res.output  # the progress line
    again = runner.invoke(cli_main, ["index", str(src), "-c", str(cat_dir), "-m", str(model_file), "-q"])
    assert again.exit_code == 0 and again.output == ""
    again = runner.invoke(cli_main, ["index", str(src), "-c", str(cat_dir), "-m", str(model_file)])
    assert "Nothing to do" in again.output

    missing = runner.invoke(cli_main, ["index", str(tmp_path / "nope"), "-c", str(cat_dir), "-m", str(model_file)])
    assert missing.exit_code == 1 and "source not found" in missing.output
    assert "Traceback" not in missing.output
    other = tmp_path / "other.pt"
    save_model(controlled_model(seed=2), other)
    refused = runner.invoke(cli_main, ["index", str(src), "-c", str(cat_dir), "-m", str(other)])
    assert refused.exit_code == 1 and "indexed with model" in refused.output
    helptext = runner.invoke(cli_main, ["index", "--help"]).output
    for word in ("--objects", "--min-area", "--region", "--quiet", "resumes", "errors table"):
        assert word in helptext


def test_idx_block_decoding_equals_per_image_fit(tmp_path):
    from simdex.indexer.runner import _DecodedBatches
    from simdex.indexer.sources import fit_to_size, open_source

    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (9, 28, 28)).astype(np.uint8)  # noisy borders: a real median
    src = open_source(write_idx(tmp_path, images, np.zeros(9)))
    for channels in (1, 3):
        block = _DecodedBatches(src, 2, 9, 4, channels, 32)[1]  # images 6, 7, 8
        assert block["ordinals"].tolist() == [6, 7, 8] and block["count"] == 3
        for row, i in enumerate(block["ordinals"]):
            canvas, scale, top, left = fit_to_size(src.read(int(i), channels), 32)
            np.testing.assert_array_equal(block["canvases"][row], canvas)
            assert block["placement"][row].tolist() == [28, 28, scale, top, left]


@pytest.mark.parametrize("region, cells, names", [
    ("grid2", 4, ["C11@00", "C11@01", "C11@10", "C11@11", "C12@00"]),
    ("mask+grid2", 5, ["C11@m", "C11@00", "C11@01", "C11@10", "C11@11"]),
])
def test_grid_region_end_to_end(tmp_path, model_file, region, cells, names):
    """--region grid2 (four means per channel and layer) and mask+grid2 (the mask's, then four): φ laid
    out per cell, and every reader (build, query, --explain, SQL, query by image) works on it unchanged."""
    from simdex.engine.build import build
    from simdex.engine.searcher import Searcher
    from simdex.engine.sql import SqlSession
    from simdex.indexer.query_features import image_features

    images, labels = random_idx_images(60, seed=8)
    src = write_idx(tmp_path / "src", images, labels)
    runner = CliRunner()
    res = runner.invoke(cli_main, ["index", str(src), "-c", str(tmp_path / "cat"), "-m", str(model_file),
                                   "--region", region, "-q"])
    assert res.exit_code == 0, res.output
    cat = Catalog.open(tmp_path / "cat")
    plain = load_model(model_file).model
    assert cat.region == region and cat.num_features == cells * plain.num_features
    assert [p["name"] for p in cat.phi[:5]] == names
    assert cat.phi[1]["offset"] == plain.phi[0].channels and len(cat.phi) == cells * len(plain.phi)
    # the same objects as a bbox (mask) catalog, four (five) times the features
    res = runner.invoke(cli_main, ["index", str(src), "-c", str(tmp_path / "box"), "-m", str(model_file), "-q",
                                   "--region", "mask" if region.startswith("mask") else "bbox"])
    ids_g, x_g = next(cat.iter_features())
    ids_b, x_b = next(Catalog.open(tmp_path / "box").iter_features())
    assert ids_g.tolist() == ids_b.tolist() and x_g.shape[1] == cells * x_b.shape[1]
    if region.startswith("mask+"):  # each layer's first cell is the mask's mean
        c = plain.phi[0].channels
        np.testing.assert_allclose(x_g[:, :c], x_b[:, :c], rtol=0, atol=1e-6)
    build(cat)
    s = Searcher.open(cat.root)
    table = s.search(ids=[3], k=5, explain=True).to_pylist()
    assert table[0]["object_id"] == 3 and table[0]["score"] == pytest.approx(1.0)
    assert sum(table[1]["layers"].values()) == pytest.approx(table[1]["score"], abs=1e-5)
    with SqlSession.open(cat.root) as sql:
        rows = sql.query("SELECT count(*) AS n FROM layers").to_pylist()
    assert rows[0]["n"] == cells * len(plain.phi)
    img = tmp_path / "q.png"
    Image.fromarray(images[3]).save(img)
    assert image_features(cat, [img]).shape == (1, cat.num_features)

