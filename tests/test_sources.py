import gzip
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from simdex.indexer.sources import (
    ImageReadError,
    SourceError,
    decode_image,
    fit_to_size,
    mask_from_background,
    open_source,
)
from synth import blob_images, fashion_like_folder


@pytest.mark.parametrize("background", [0.0, 1.0])
def test_mask_rule_finds_the_object_on_a_blank_background(background):
    img = blob_images(1, 32, seed=2, background=background)[0]
    truth = np.abs(img[0] - background) > 0.3  # the blob's pixels are at least 0.5 * 0.85 away
    mask = mask_from_background(img)
    assert np.array_equal(mask, truth)


def test_mask_rule_uses_any_channel_of_rgb():
    img = np.zeros((3, 8, 8), np.float32)
    img[2, 3:5, 3:5] = 0.5  # only blue differs
    assert mask_from_background(img).sum() == 4


def test_fit_to_size_pads_small_and_shrinks_large_images():
    small = np.ones((1, 28, 28), np.float32)
    canvas, scale, top, left = fit_to_size(small, 32, np.zeros(1, np.float32))
    assert canvas.shape == (1, 32, 32) and scale == 1.0 and (top, left) == (2, 2)
    assert canvas.sum() == 28 * 28
    big = np.ones((3, 64, 128), np.float32)
    canvas, scale, top, left = fit_to_size(big, 32, np.zeros(3, np.float32))
    assert canvas.shape == (3, 32, 32) and scale == 0.25 and (top, left) == (8, 0)


def test_folder_source_is_recursive_with_subfolder_labels(tmp_path):
    imgs = (blob_images(3, 16, seed=0)[:, 0] * 255).astype(np.uint8)
    (tmp_path / "boots" / "winter").mkdir(parents=True)
    Image.fromarray(imgs[0]).save(tmp_path / "top.png")
    Image.fromarray(imgs[1]).save(tmp_path / "boots" / "a.jpg")
    Image.fromarray(imgs[2]).save(tmp_path / "boots" / "winter" / "b.webp")
    src = open_source(tmp_path)
    assert len(src) == 3
    labels = {r.source.rsplit("/", 1)[-1]: r.label for r in src.records}
    assert labels == {"top.png": None, "a.jpg": "boots", "b.webp": "boots/winter"}
    assert src.read(0).shape == (1, 16, 16)


def test_csv_and_parquet_lists_carry_labels_masks_and_metadata(tmp_path):
    img = (blob_images(1, 16, seed=0)[0, 0] * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    Image.fromarray(((img > 40) * 255).astype(np.uint8)).save(tmp_path / "x_mask.png")
    (tmp_path / "list.csv").write_text("path,label,mask,colour\nx.png,shoe,x_mask.png,red\n")
    src = open_source(tmp_path / "list.csv")
    rec = src.records[0]
    assert (rec.label, rec.metadata) == ("shoe", {"colour": "red"})
    image = src.read(0)
    assert np.array_equal(src.read_mask(0, image), img > 40)
    pq.write_table(pa.table({"path": [str(tmp_path / "x.png")], "price": [9.5]}), tmp_path / "list.parquet")
    src = open_source(tmp_path / "list.parquet")
    assert src.records[0].metadata == {"price": 9.5} and src.records[0].label is None
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(SourceError, match="'path' column"):
        open_source(tmp_path / "bad.csv")


def _write_idx(path, arr: np.ndarray):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_folder_gives_both_splits_with_class_names(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.full((3, 28, 28), 7))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([9, 0, 5]))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((2, 28, 28), 9))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 8]))
    src = open_source(tmp_path)
    assert len(src) == 5
    assert [r.label for r in src.records] == ["Ankle boot", "T-shirt/top", "Sandal", "Sneaker", "Bag"]
    assert [r.metadata["split"] for r in src.records] == ["train"] * 3 + ["test"] * 2
    assert src.read(4)[0, 0, 0] == pytest.approx(9 / 255)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "CMYK", "1", "LA"])
def test_decode_converts_every_common_mode(tmp_path, mode):
    base = Image.fromarray((blob_images(1, 16, seed=4)[0, 0] * 255).astype(np.uint8))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(base).astype(np.uint16) * 257)  # uint16 arrays become 16-bit images
    path = tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    for channels in (1, 3):
        arr = decode_image(path, channels)
        assert arr.shape == (channels, 16, 16) and arr.dtype == np.float32
        assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.max() > 0.3


def test_decode_errors_have_reasons(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError) as e:
        decode_image(tmp_path / "empty.png")
    assert e.value.reason == "empty_file"
    with pytest.raises(ImageReadError) as e:
        decode_image(tmp_path / "text.png")
    assert e.value.reason == "not_an_image"
    with pytest.raises(ImageReadError) as e:
        decode_image(tmp_path / "missing.png")
    assert e.value.reason == "missing"
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError) as e:
        decode_image(tmp_path / "big.png", max_pixels=10_000)
    assert e.value.reason == "too_large"


def test_unknown_sources_are_explained(tmp_path):
    with pytest.raises(SourceError, match="source not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SourceError, match="unknown kind"):
        open_source(tmp_path / "x.json")


def test_fashion_mnist_lookup_and_download_without_network(tmp_path, monkeypatch):
    """The data edge: $SIMDEX_FASHION_MNIST is honoured, a missing dataset says how to get it, and
    torchvision's downloader failing (no network here) becomes a clear error, not a traceback."""
    import urllib.error

    import torchvision.datasets

    from simdex.indexer import sources
    from simdex.indexer.datasets import download_fashion_mnist

    monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", ())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIMDEX_FASHION_MNIST", raising=False)
    with pytest.raises(SourceError, match="apt-get install -y dataset-fashion-mnist"):
        sources.find_fashion_mnist()
    fashion_like_folder(tmp_path / "fm", train=6, test=3)
    monkeypatch.setenv("SIMDEX_FASHION_MNIST", str(tmp_path / "fm"))
    assert sources.find_fashion_mnist() == tmp_path / "fm"
    assert len(sources.open_source("fashion-mnist:test")) == 3

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(RuntimeError, match="could not download Fashion-MNIST .*apt-get install"):
        download_fashion_mnist(tmp_path / "dl")
