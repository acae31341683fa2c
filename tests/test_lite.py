"""indexer/lite.py: the numpy forward pass and extraction equal the torch ones, and a CLI query by
image runs without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import REGION_MODES, Catalog
from simdex.indexer import lite
from simdex.indexer.checkpoint import DEFAULT_MODEL_PATH, load_model
from simdex.indexer.extract import connected_components
from simdex.indexer.query_features import QueryImageError, _lite_features, _torch_features, query_net
from simdex.indexer.runner import IndexOptions, index_source
from synth import blob_images


@pytest.fixture(scope="module")
def shipped():
    loaded = load_model(DEFAULT_MODEL_PATH)
    return loaded.model.eval(), lite.LiteUNet.from_torch(loaded.model, loaded.sha256)


def _images(n=6, seed=3):
    rgb = blob_images(n, 64, seed=seed, channels=3, background=0.9)  # shapes on a light background
    rgb[1::2] = blob_images(n // 2, 64, seed=seed + 1, channels=3)  # and on black
    return [im for im in rgb]


def test_forward_pass_equals_torch(shipped):
    net, lnet = shipped
    x = _images(1)[0]
    with torch.inference_mode():
        logits, acts = net(torch.from_numpy(x)[None])
    l_logits, l_acts = lnet.forward(x)
    np.testing.assert_allclose(l_logits, logits[0].numpy(), rtol=1e-4, atol=1e-4)
    assert len(l_acts) == len(acts) == 18
    for a, b in zip(l_acts, acts, strict=True):
        np.testing.assert_allclose(a, b[0].numpy(), rtol=1e-4, atol=1e-4)


def test_connected_components_equal_torch():
    rng = np.random.default_rng(0)
    for _ in range(20):
        fg = rng.random((24, 31)) < rng.uniform(0.2, 0.6)
        want = connected_components(torch.from_numpy(fg)[None])[0].numpy()
        np.testing.assert_array_equal(lite.connected_components(fg), want)


@pytest.mark.parametrize("region", REGION_MODES)
def test_features_equal_torch_for_every_region_mode_and_for_boxes(shipped, region):
    net, lnet = shipped
    cat = SimpleNamespace(region=region)
    images = _images()
    names = [f"im{i}" for i in range(len(images))]
    shown = [im.shape[1:] for im in images]
    want = _torch_features(cat, images, names, 1, [None] * len(images), net, shown)
    got = _lite_features(cat, images, names, 1, [None] * len(images), lnet, shown)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if region != "full":
        boxes = [(4, 6, 40, 50), (0, 0, 64, 64), (30, 30, 33, 31)] * 2
        want = _torch_features(cat, images, names, 1, boxes, net, shown)
        got = _lite_features(cat, images, names, 1, boxes, lnet, shown)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_no_object_is_a_query_error(shipped):
    _, lnet = shipped
    blank = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(QueryImageError, match="finds no object"):
        _lite_features(SimpleNamespace(region="mask"), [blank], ["blank.png"], 1, [None], lnet, [blank.shape[1:]])


def test_a_damaged_or_foreign_export_is_ignored(shipped, tmp_path):
    _, lnet = shipped
    path = lnet.save(tmp_path / "m.npz")
    assert lite.LiteUNet.load(path, lnet.model_sha256) is not None
    assert lite.LiteUNet.load(path, "0" * 64) is None  # another model's export
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert lite.LiteUNet.load(path, lnet.model_sha256) is None  # damaged: re-exported from torch


@pytest.fixture(scope="module")
def folder_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("litecat")
    images = root / "images"
    images.mkdir()
    for i, im in enumerate(_images(8)):
        Image.fromarray((im.transpose(1, 2, 0) * 255).astype(np.uint8)).save(images / f"{i}.png")
    index_source(str(images), root / "cat", DEFAULT_MODEL_PATH, IndexOptions(workers=0))
    build(Catalog.open(root / "cat"), BuildConfig())
    return root / "cat", images


def test_index_exports_the_model_and_queries_use_it(folder_catalog):
    cat_root, _ = folder_catalog
    cat = Catalog.open(cat_root)
    assert lite.lite_path(cat.model_sha256).is_file()  # written by `simdex index`
    assert isinstance(query_net(cat), lite.LiteUNet)


def test_resize_equals_torch_antialiased_bilinear():
    from torch.nn import functional as F

    from simdex.indexer.sources import resize_antialiased

    rng = np.random.default_rng(1)
    for h, w, nh, nw in [(256, 256, 64, 64), (301, 97, 64, 21), (65, 64, 64, 63), (1000, 40, 64, 3)]:
        img = rng.random((3, h, w), dtype=np.float32)
        want = F.interpolate(torch.from_numpy(img)[None], size=(nh, nw), mode="bilinear", antialias=True,
                             align_corners=False)[0].numpy()
        np.testing.assert_allclose(resize_antialiased(img, nh, nw), want, atol=1e-5)


@pytest.mark.parametrize("upscale", [1, 3])  # 3: a 192×192 image, reduced to the model's 64×64 on the way
def test_cli_query_by_image_does_not_import_torch(folder_catalog, tmp_path, upscale):
    cat_root, images = folder_catalog
    query = images / "3.png"
    if upscale > 1:
        with Image.open(query) as im:
            im.resize((64 * upscale, 64 * upscale), Image.NEAREST).save(tmp_path / "big.png")
        query = tmp_path / "big.png"
    code = ("import sys; from simdex.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code, "query", "--catalog", str(cat_root), "--image",
                          str(query), "-k", "2", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout.splitlines()[0])
    # P a hair under 1: eight images leave some features a std of ~1e-6, which z-scoring turns
    # float rounding of the index's batched forward pass into (the torch query path scores the same)
    assert first["source"].endswith("3.png") and first["score"] > (0.99 if upscale == 1 else 0.5)
