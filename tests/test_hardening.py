"""Hardening (issue 11, the audit's gaps): every damaged file of a build reported, large build
files verified once per change, a resumed source that changed, malformed model headers,
inputs the folder walk used to skip, user mistakes as one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, class_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import Catalog
from simdex.engine.check import check_catalog
from simdex.engine.errors import SimdexError

LAYERS = [("C11", 8), ("C12", 8)]
CLASSES = ["boot", "bag", "shirt"]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    cat = new_catalog(tmp_path_factory.mktemp("hardening") / "cat", LAYERS)
    x, labels = class_objects(400, 1, CLASSES, 16)
    append_objects(cat, x[:200], labels[:200], "job0")
    append_objects(cat, x[200:], labels[200:], "job1")
    build(cat, BuildConfig(retain=1.0, index="ivf", recall_queries=0, index_options={"nlist": 4, "nprobe": 4}))
    return cat.root


@pytest.fixture
def cat(healthy, tmp_path) -> Catalog:
    shutil.copytree(healthy, tmp_path / "cat")
    return Catalog.open(tmp_path / "cat")


def garble(path: Path, at: float = 0.5, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + n] = bytes(b ^ 0xFF for b in data[i:i + n])
    path.write_bytes(bytes(data))


def one_line_error(args: list[str], expect: str | None = None) -> str:
    r = CliRunner().invoke(cli_main, args)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    if expect is not None:
        assert expect in r.output, r.output
    return r.output


# ---------------------------------------------------------------- 1. every damaged file of a build

def test_check_reports_every_damaged_file_of_a_damaged_copy(cat):
    build_dir = cat.current_build_dir()
    assert (build_dir / "candidates.faiss").is_file()
    garble(build_dir / "z.npy", 0.7)
    garble(build_dir / "codes.npy", 0.6)
    garble(build_dir / "candidates.faiss", 0.5)
    garble(build_dir / "pruning.npz", 0.5)
    (build_dir / "omega.npy").unlink()
    garble(cat.root / "shards/000001.parquet")
    garble(cat.root / "shards/000002.parquet")
    report = check_catalog(cat.root)
    damaged = {Path(p.path).name if p.path.startswith("builds") else p.path for p in report.problems}
    assert damaged == {"z.npy", "codes.npy", "candidates.faiss", "pruning.npz", "omega.npy",
                       "shards/000001.parquet", "shards/000002.parquet"}, report.problems
    assert all(p.recovery for p in report.problems)
    out = one_line_error(["check", "--catalog", str(cat.root)])
    assert out.count("DAMAGED") == 7
    with pytest.raises(SimdexError, match="damaged"):  # a query still refuses the build, naming one file
        from simdex.engine.searcher import Searcher

        Searcher.open(cat.root)


# ---------------------------------------------------------------- 2. large build files: verified once per change

@pytest.fixture
def large_files(monkeypatch):
    """Every build file counts as large (over SMALL_FILE_BYTES), a change is never too recent to
    stamp, and the full hashes are counted."""
    import simdex.engine.integrity as integrity

    hashed = []
    real = integrity.sha256_of
    monkeypatch.setattr(integrity, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(integrity, "RACY_NS", 0)
    monkeypatch.setattr(integrity, "sha256_of", lambda p: hashed.append(Path(p).name) or real(p))
    return hashed


def _search(root: Path):
    from simdex.engine.searcher import Searcher

    return Searcher.open(root).search(ids=[3], k=5).column("object_id").to_pylist()


def test_large_build_files_are_hashed_once_then_trusted_until_they_change(cat, large_files):
    expected = _search(cat.root)  # the copy has new inodes: hashed in full, then stamped
    assert "z.npy" in large_files and "candidates.faiss" in large_files
    assert (cat.current_build_dir() / ".verified.json").is_file()
    large_files.clear()
    assert _search(cat.root) == expected
    assert large_files == []  # stamped and unchanged: a stat, no read
    garble(cat.current_build_dir() / "z.npy", 0.7)
    with pytest.raises(SimdexError, match=r"z\.npy is damaged.*SHA-256"):
        _search(cat.root)
    one_line_error(["query", "--catalog", str(cat.root), "3"], expect="z.npy")


def test_a_garbled_large_file_whose_mtime_was_put_back_is_still_caught(cat, large_files):
    import os

    _search(cat.root)
    z = cat.current_build_dir() / "z.npy"
    st = z.stat()
    garble(z, 0.7)
    os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime; the ctime moved on
    with pytest.raises(SimdexError, match=r"z\.npy is damaged"):
        _search(cat.root)


def test_a_new_build_stamps_its_large_files(tmp_path, large_files):
    cat = new_catalog(tmp_path / "cat", LAYERS)
    x, labels = class_objects(100, 2, CLASSES, 16)
    append_objects(cat, x, labels, "a")
    build(cat, BuildConfig(retain=1.0, recall_queries=0))
    large_files.clear()
    _search(cat.root)
    assert large_files == []  # the build hashed them for its manifest: the first query reads none


def test_stamps_of_a_catalog_that_cannot_be_written_go_to_the_user_cache(cat, large_files, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stamp = cat.current_build_dir() / ".verified.json"
    stamp.unlink(missing_ok=True)
    stamp.mkdir()  # unwritable as a file, even for root (a read-only folder is not, for root)
    _search(cat.root)
    assert len(list((tmp_path / "cache/simdex/verified").glob("*.json"))) == 1
    large_files.clear()
    _search(cat.root)
    assert large_files == []


# ---------------------------------------------------------------- 4. model headers checked before a model is built

@pytest.fixture
def model_path(tmp_path) -> Path:
    import torch

    from simdex.indexer.checkpoint import save_model
    from simdex.indexer.model import SparseUNet, UNetConfig

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(SparseUNet(UNetConfig(width=0.25, image_size=16)), path)
    return path


def forge(path: Path, edit) -> Path:
    """Rewrite the model file's header with `edit(info)` and a matching checksum (well-formed)."""
    import json

    import torch

    from simdex.indexer.checkpoint import _digest

    blob = torch.load(path, weights_only=True)
    info = json.loads(blob["header"])
    edit(info)
    blob["header"] = json.dumps(info, sort_keys=True)
    blob["sha256"] = _digest(blob["header"], blob["state_dict"])
    torch.save(blob, path)
    return path


BAD_HEADERS = {
    "no config": (lambda i: i.pop("config"), "has no config"),
    "config not an object": (lambda i: i.update(config=[1]), "has no config"),
    "width a string": (lambda i: i["config"].update(width="abc"), "config.width is 'abc'"),
    "width huge": (lambda i: i["config"].update(width=1e9), "config.width"),
    "width a bool": (lambda i: i["config"].update(width=True), "config.width"),
    "image size odd": (lambda i: i["config"].update(image_size=17), "config.image_size"),
    "classes a string": (lambda i: i["config"].update(num_classes="2"), "config.num_classes"),
    "arch unknown": (lambda i: i["config"].update(arch="vit"), "config.arch"),
    "meta a list": (lambda i: i.update(meta=[]), "meta"),
    "width 6 with width-0.25 weights": (lambda i: i["config"].update(width=6.0), "do not match the saved config"),
}


@pytest.mark.parametrize("kind", list(BAD_HEADERS))
def test_a_malformed_model_header_is_one_line_before_any_network_is_built(model_path, kind, monkeypatch):
    import torch

    import simdex.indexer.checkpoint as checkpoint
    from simdex.indexer.checkpoint import ModelFileError, load_model

    edit, message = BAD_HEADERS[kind]
    forge(model_path, edit)
    real, devices = checkpoint.build_model, []
    monkeypatch.setattr(checkpoint, "build_model", lambda c: devices.append(str(torch.get_default_device())) or real(c))
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(model_path)
    assert "\n" not in str(info.value) and str(model_path) in str(info.value)
    assert devices in ([], ["meta"])  # never a real allocation before the error
    one_line_error(["model-info", "--model", str(model_path)], expect=message.split(" is ")[0])


def test_weights_of_another_name_are_refused_before_building(model_path):
    import torch

    from simdex.indexer.checkpoint import ModelFileError, _digest, load_model

    blob = torch.load(model_path, weights_only=True)
    blob["state_dict"]["extra.weight"] = torch.zeros(2)
    blob["sha256"] = _digest(blob["header"], blob["state_dict"])
    torch.save(blob, model_path)
    with pytest.raises(ModelFileError, match="unexpected extra.weight"):
        load_model(model_path)


# ---------------------------------------------------------------- 6. user mistakes: one-line errors

def usage_error(args: list[str], expect: str) -> str:
    r = CliRunner().invoke(cli_main, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and expect in r.output, r.output
    return r.output


def test_query_output_into_a_missing_folder_is_refused_before_searching(cat, tmp_path, monkeypatch):
    import simdex.engine.searcher as searcher

    monkeypatch.setattr(searcher.Searcher, "open", lambda *a: pytest.fail("searched"))
    usage_error(["query", "-c", str(cat.root), "3", "-o", str(tmp_path / "missing/x.csv"), "--format", "csv"],
                "does not exist")
    usage_error(["query", "-c", str(cat.root), "3", "-o", str(cat.root / "shards/000001.parquet")],
                "inside the catalog")


def test_query_sheet_of_an_unknown_extension_is_refused_before_searching(cat, tmp_path, monkeypatch):
    import simdex.engine.searcher as searcher

    monkeypatch.setattr(searcher.Searcher, "open", lambda *a: pytest.fail("searched"))
    out = one_line_error(["query", "-c", str(cat.root), "3", "--sheet", str(tmp_path / "x.txt")], "x.txt")
    assert "rank" not in out and len(out.strip().splitlines()) == 1  # no results printed before the error
    one_line_error(["query", "-c", str(cat.root), "3", "--sheet", str(tmp_path / "missing/x.png")], "does not exist")


def test_query_output_that_cannot_be_written_is_one_line(cat, tmp_path, monkeypatch):
    import errno
    import os

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    one_line_error(["query", "-c", str(cat.root), "3", "-o", str(tmp_path / "x.csv")], expect="No space left")


def test_an_idx_header_claiming_255_dimensions_is_a_source_error(tmp_path):
    from simdex.indexer.sources import SourceError, open_source

    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 255]) + b"\x00" * 12)
    with pytest.raises(SourceError, match="255 dimensions"):
        open_source(path)
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + b"\x00" * 5)  # 5 bytes of int32s
    with pytest.raises(SourceError, match="truncated"):
        open_source(path)
    path.write_bytes(bytes([0, 0, 0x08, 3]) + b"\xff" * 12 + b"\x00" * 4)  # 2^96 values: no overflow
    with pytest.raises(SourceError, match="truncated"):
        open_source(path)


def test_model_info_evaluate_on_a_folder_without_an_image_is_one_line(model_path, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    one_line_error(["model-info", "--model", str(model_path), "--evaluate", str(folder)], expect="cannot evaluate")


# ---------------------------------------------------------------- 5. every input accounted for; EXIF orientation

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from simdex.indexer.checkpoint import save_model
    from synth import controlled_model

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(controlled_model(), path)
    return path


def rect_png(path: Path, h: int = 20, w: int = 24, box=(2, 3, 9, 12), orientation: int | None = None):
    import numpy as np
    from PIL import Image

    im = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    im[y0:y1, x0:x1] = 220
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(im).save(path, exif=exif)
    return im


def test_hidden_files_broken_symlinks_and_fifos_are_errors_rows_and_never_block(tmp_path, tiny_model):
    import os
    import signal

    from simdex.indexer.runner import IndexOptions, index_source

    src = tmp_path / "imgs"
    src.mkdir()
    rect_png(src / "a.png")
    (src / ".DS_Store").write_bytes(b"\0\1")
    (src / ".thumbnails").mkdir()
    rect_png(src / ".thumbnails" / "a.png")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(src / "pipe.png")
    (src / "notes.txt").write_text("hello")
    signal.alarm(60)  # a reader that opened the FIFO would wait for a writer forever
    try:
        res = index_source(src, tmp_path / "cat", tiny_model, IndexOptions(workers=0, batch_size=4))
    finally:
        signal.alarm(0)
    assert res.objects == 1
    assert res.errors == {"hidden_file": 1, "hidden_folder": 1, "broken_symlink": 1, "not_a_file": 1,
                          "not_an_image": 1}, res.errors
    errors = Catalog.open(tmp_path / "cat").read_errors().to_pylist()
    by_name = {Path(r["source"]).name: r["reason"] for r in errors}
    assert by_name == {".DS_Store": "hidden_file", ".thumbnails": "hidden_folder", "gone.png": "broken_symlink",
                       "pipe.png": "not_a_file", "notes.txt": "not_an_image"}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_exif_orientation_is_applied_before_anything_sees_the_pixels(tmp_path, fmt):
    import numpy as np

    from simdex.indexer.sources import decode_image

    stored = rect_png(tmp_path / f"r.{fmt}", orientation=6)  # displayed: turned 90° clockwise
    plain = decode_image(tmp_path / f"r.{fmt}")[0]
    displayed = np.rot90(stored, -1).astype(np.float32) / 255
    assert plain.shape == displayed.shape == (24, 20)
    assert np.abs(plain - displayed).max() < (0.02 if fmt == "png" else 0.25)


def test_an_xmp_orientation_of_a_png_is_applied_too(tmp_path):
    """Pillow reads the orientation from XMP where a file has no EXIF; so does the decoder, which
    skips getexif() only for files with neither."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    from simdex.indexer.sources import decode_image

    im = np.zeros((20, 24), np.uint8)
    im[3:12, 2:9] = 220
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    Image.fromarray(im).save(tmp_path / "x.png", pnginfo=info)
    Image.fromarray(im).save(tmp_path / "plain.png")
    assert decode_image(tmp_path / "x.png")[0].shape == (24, 20)  # turned 90°
    assert decode_image(tmp_path / "plain.png")[0].shape == (20, 24)


def test_boxes_of_an_oriented_image_are_in_displayed_coordinates(tmp_path, tiny_model):
    import numpy as np

    from simdex.indexer.runner import IndexOptions, index_source

    src = tmp_path / "imgs"
    src.mkdir()
    stored = rect_png(src / "turned.png", orientation=6)
    ys, xs = np.nonzero(np.rot90(stored, -1))
    index_source(src, tmp_path / "cat", tiny_model, IndexOptions(workers=0))
    row = Catalog.open(tmp_path / "cat").read_objects().to_pylist()[0]
    assert (row["x0"], row["y0"], row["x1"], row["y1"]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


# ---------------------------------------------------------------- 3. a resumed source that changed

def four_images(src: Path) -> None:
    src.mkdir()
    for i, name in enumerate("abcd"):
        rect_png(src / f"{name}.png", box=(2 + i, 3, 9 + i, 12))


def test_a_resume_after_files_were_renamed_names_the_change(tmp_path, tiny_model):
    from simdex.engine.catalog import CatalogError
    from simdex.indexer.runner import IndexOptions, index_source

    src, cat_dir = tmp_path / "imgs", tmp_path / "cat"
    four_images(src)
    index_source(src, cat_dir, tiny_model, IndexOptions(workers=0, limit=2))  # as if killed after two images
    (src / "a.png").rename(src / "e.png")  # same count: b c d e
    with pytest.raises(CatalogError, match=r"changed since its job began.*image #0 was .*a\.png, is now .*b\.png"):
        index_source(src, cat_dir, tiny_model, IndexOptions(workers=0))
    out = one_line_error(["index", str(src), "--catalog", str(cat_dir), "--model", str(tiny_model)],
                         expect="image #0 was")
    assert "Put the files back" in out and len(out.strip().splitlines()) == 1
    (src / "e.png").rename(src / "a.png")  # put back: the resume goes on, nothing duplicated
    res = index_source(src, cat_dir, tiny_model, IndexOptions(workers=0))
    assert res.already_indexed == 2 and res.catalog_objects == 4
    assert sorted(Path(s).name for s in Catalog.open(cat_dir).read_objects(["source"]).column("source").to_pylist()) \
        == ["a.png", "b.png", "c.png", "d.png"]


def test_a_resume_after_a_file_not_yet_indexed_was_rewritten_says_so(tmp_path, tiny_model):
    from simdex.engine.catalog import CatalogError
    from simdex.indexer.runner import IndexOptions, index_source

    src, cat_dir = tmp_path / "imgs", tmp_path / "cat"
    four_images(src)
    index_source(src, cat_dir, tiny_model, IndexOptions(workers=0, limit=2))
    rect_png(src / "d.png", h=24, w=24)  # another image under the same name
    with pytest.raises(CatalogError, match="list of paths and sizes differs"):
        index_source(src, cat_dir, tiny_model, IndexOptions(workers=0))


# ---------------------------------------------------------------- 7. a lost journal is not silent in sql

def test_sql_warns_when_shards_are_listed_by_no_journal(cat):
    runner = CliRunner()
    ok = runner.invoke(cli_main, ["sql", "-c", str(cat.root), "SELECT count(*) AS n FROM objects"])
    assert ok.exit_code == 0 and "warning" not in ok.output
    (cat.root / "jobs/job1.json").unlink()
    r = runner.invoke(cli_main, ["sql", "-c", str(cat.root), "SELECT count(*) AS n FROM objects"])
    assert r.exit_code == 0, r.output
    warning = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "1 shard/errors file(s)" in warning[0] and "simdex check" in warning[0]
    assert "200" in r.output  # job0's rows are still shown
