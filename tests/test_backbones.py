"""Torchvision backbones (Appendix B): `simdex index --backbone resnet18|resnet50 --weights FILE`.

Weights are randomly initialised (seeded) and written to a file, as a user's own file would be;
nothing is downloaded (the download path is tested only for its error, with the network call faked)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main as cli_main
from simdex.engine.catalog import Catalog
from simdex.indexer.backbones import (
    BackboneConfig,
    BackboneError,
    BackboneNet,
    backbone_phi,
    download_weights,
    load_backbone,
)
from simdex.indexer.query_features import QueryImageError, catalog_model
from simdex.indexer.sources import decode_image, fit_to_size

SIZE = 64  # the backbone's canvas in these tests: small, so a forward pass is fast


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two classes of 8 colour images: red squares and blue discs at random places on grey noise."""
    root = tmp_path_factory.mktemp("bbimages")
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:48, :40]
    for label in ("red", "blue"):
        (root / label).mkdir()
        for i in range(8):
            im = rng.integers(90, 130, (48, 40, 3)).astype(np.uint8)
            cy, cx = rng.integers(12, 36), rng.integers(12, 28)
            inside = (abs(yy - cy) < 8) & (abs(xx - cx) < 8) if label == "red" else (yy - cy) ** 2 + (xx - cx) ** 2 < 64
            im[inside] = (230, 30, 30) if label == "red" else (30, 30, 230)
            Image.fromarray(im).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, weights, images) -> Path:
    cat = tmp_path_factory.mktemp("bbcat") / "cat"
    run = CliRunner().invoke(cli_main, ["index", str(images), "-c", str(cat), "--backbone", "resnet18", "--weights",
                                        str(weights), "--image-size", str(SIZE), "--workers", "0", "-q"])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(cli_main, ["build", "-c", str(cat), "--retain", "1.0"])
    assert run.exit_code == 0, run.output
    return cat


def test_backbone_phi_per_stage_and_per_block():
    stages = backbone_phi(BackboneConfig("resnet50"))
    assert [p.name for p in stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert sum(p.channels for p in stages) == 256 + 512 + 1024 + 2048
    blocks = backbone_phi(BackboneConfig("resnet18", phi="blocks", image_size=SIZE))
    assert [p.name for p in blocks][:3] == ["layer1.0", "layer1.1", "layer2.0"] and len(blocks) == 8
    net = BackboneNet(BackboneConfig("resnet18", phi="blocks", image_size=SIZE)).eval()
    logits, acts = net(torch.rand(2, 3, SIZE, SIZE))
    assert [a.shape[1] for a in acts] == [p.channels for p in blocks]
    assert bool((logits[:, 1] > logits[:, 0]).all())  # the whole image is the object


def test_catalog_records_backbone_and_weights_sha256(catalog, weights):
    info = Catalog.open(catalog).info
    assert info["backbone"] == "resnet18" and info["region"] == "full"
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["config"] == {"arch": "resnet18", "phi": "stages", "image_size": SIZE, "in_channels": 3, "num_classes": 2}
    assert info["num_features"] == 64 + 128 + 256 + 512


def test_features_are_global_average_pools_of_the_stage_maps(catalog, weights, images):
    cat = Catalog.open(catalog)
    objects = cat.read_objects(["object_id", "source"]).to_pylist()
    row = next(r for r in objects if r["source"].endswith("blue/5.png"))
    row["features"] = next(x[list(ids).index(row["object_id"])] for ids, x in cat.iter_features()
                           if row["object_id"] in ids)
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    canvas = fit_to_size(decode_image(row["source"], 3), SIZE)[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1((torch.from_numpy(canvas)[None] - mean) / std))))
        gap = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = stage(h)
            gap.append(h.mean(dim=(2, 3))[0])
    np.testing.assert_allclose(row["features"], torch.cat(gap).numpy(), rtol=1e-4, atol=1e-5)


def test_backbone_catalog_answers_queries_by_id_and_by_image(catalog, images):
    run = CliRunner().invoke(cli_main, ["query", "-c", str(catalog), "0", "-k", "3", "--format", "json"])
    assert run.exit_code == 0, run.output
    hits = [json.loads(line) for line in run.output.splitlines()]
    assert hits[0]["object_id"] == 0 and hits[0]["score"] == pytest.approx(1.0)
    image = images / "blue" / "2.png"
    run = CliRunner().invoke(cli_main, ["query", "-c", str(catalog), "--image", str(image), "-k", "1", "--format", "json"])
    assert run.exit_code == 0, run.output
    best = json.loads(run.output.splitlines()[0])
    assert best["source"] == str(image) and best["score"] == pytest.approx(1.0, abs=1e-5)  # the same network re-ran


def test_query_by_image_refuses_other_weights(tmp_path, catalog):
    """The catalog's weights file replaced by another network's: a query by image must not use it."""
    cat = Catalog.open(catalog)
    other = tmp_path / "r18.pth"
    torch.manual_seed(4)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(QueryImageError, match="not the one the catalog was indexed with"):
        catalog_model(Catalog(cat.root, {**cat.info, "model_path": str(other)}))
    with pytest.raises(QueryImageError, match="weights file not found"):
        catalog_model(Catalog(cat.root, {**cat.info, "model_path": str(tmp_path / "gone.pth")}))
    assert isinstance(catalog_model(cat), BackboneNet)


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet18"], "no download is possible offline"),
    (["--backbone", "resnet18", "--weights", "nothere.pth"], "weights file not found: nothere.pth"),
    (["--backbone", "resnet50", "--weights", "{weights}"], "does not hold resnet50 weights"),
    (["--weights", "{weights}"], "need --backbone"),
    (["--backbone", "resnet18", "--weights", "{weights}", "--region", "bbox"], "does not segment objects"),
    (["--backbone", "resnet18", "--weights", "{weights}", "--image-size", "50"], "multiple of 32"),
    (["--backbone", "resnet18", "--weights", "{weights}", "--model", "{weights}"], "exclude each other"),
])
def test_backbone_mistakes_are_one_line_errors(tmp_path, weights, images, args, message):
    args = [a.replace("{weights}", str(weights)) for a in args]
    run = CliRunner().invoke(cli_main, ["index", str(images), "-c", str(tmp_path / "cat"), *args])
    assert run.exit_code != 0 and message in run.output, run.output
    assert "Traceback" not in run.output


def test_weights_that_would_run_code_or_are_not_a_state_dict_are_refused(tmp_path):
    pickled = tmp_path / "code.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None)}, pickled)  # a whole module: pickled code
    with pytest.raises(BackboneError, match="without executing code"):
        load_backbone("resnet18", pickled)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(BackboneError, match="no state dict"):
        load_backbone("resnet18", tensor)


def test_download_without_a_network_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(BackboneError, match="cannot download resnet18's weights from https://download.pytorch.org"):
        download_weights("resnet18")
    run = CliRunner().invoke(cli_main, ["index", str(tmp_path), "-c", str(tmp_path / "cat"), "--backbone", "resnet18",
                                        "--download-weights"])
    assert run.exit_code != 0 and "pass --weights FILE" in run.output and "Traceback" not in run.output


def test_python_api_indexes_with_a_loaded_backbone(tmp_path, weights, images):
    import simdex

    result = simdex.index(images / "red", tmp_path / "cat", model=load_backbone("resnet18", weights, image_size=32))
    assert result.objects == 8 and Catalog.open(tmp_path / "cat").info["backbone"] == "resnet18"


def test_similarity_maps_of_a_backbone_catalog_sum_to_p(catalog):
    from simdex.engine.searcher import Searcher
    from simdex.explain_maps import explain_pair

    s = Searcher.open(catalog)
    e = explain_pair(s, [0], 9)
    assert list(e.layer_parts) == ["layer1", "layer2", "layer3", "layer4"]
    for im in e.images:
        assert im.pixel_map.sum() == pytest.approx(e.P, abs=1e-5) and im.z_error < 1e-3
