"""The README's Python API section, run as written, and the API's promises around it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import simdex
from simdex.cli.main import main as cli_main

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ("Sandal", "Sneaker", "Ankle boot")


def readme_api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def shape_image(rng, kind: int, size: int = 28) -> np.ndarray:
    """A bright object on black whose shape depends on the class: wide bar, tall bar, square."""
    im = np.zeros((size, size), np.uint8)
    w, h = [(14, 5), (5, 14), (10, 10)][kind] + rng.integers(-1, 2, 2)
    x0, y0 = rng.integers(2, size - 2 - w), rng.integers(2, size - 2 - h)
    im[y0 : y0 + h, x0 : x0 + w] = rng.integers(150, 256)
    return im


@pytest.fixture(scope="module")
def api_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    for kind, label in enumerate(CLASSES):
        (root / "images" / label).mkdir(parents=True)
        for i in range(25):
            Image.fromarray(shape_image(rng, kind)).save(root / "images" / label / f"{i:02d}.png")
    Image.fromarray(shape_image(rng, 2)).save(root / "boot.png")
    return root


@pytest.fixture(scope="module")
def readme_run(api_folder) -> dict:
    """Run every Python block of the README's API section, in order, in one namespace, in `api_folder`."""
    import os

    blocks = readme_api_blocks()
    assert len(blocks) >= 3
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(api_folder)
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def test_readme_examples_run_and_match_the_cli(readme_run, api_folder):
    ns = readme_run
    hits = ns["hits"]
    assert len(hits) == 10 and hits[0]["object_id"] == 42 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    out = CliRunner().invoke(cli_main, ["query", "--catalog", str(api_folder / "cat"), "42", "--format", "json"])
    assert out.exit_code == 0, out.output
    cli = [json.loads(line) for line in out.output.splitlines()]
    assert [h["object_id"] for h in hits] == [r["object_id"] for r in cli]
    np.testing.assert_allclose([h["score"] for h in hits], [r["score"] for r in cli], rtol=1e-6)
    # the refinements did what they say
    assert set(ns["table"].column("label").to_pylist()) == {"Sandal"} and ns["table"].num_rows <= 5
    assert list(ns["frame"].columns[:3]) == ["rank", "object_id", "score"] and set(ns["frame"]["label"]) == {"Sandal"}
    assert ns["several"].height == 10 and ns["several"]["score"].max() <= 1.0
    assert len(ns["by_image"]) == 5 and ns["by_image"][0]["score"] > 0.5
    assert ns["by_vector"][0]["object_id"] == 7 and ns["by_vector"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert dict(zip(*ns["labels"].to_pydict().values(), strict=True)) == {c: 25 for c in CLASSES}
    # the CLI's --where and the API's where agree too
    out = CliRunner().invoke(cli_main, ["query", "--catalog", str(api_folder / "cat"), "42", "-k", "5",
                                        "--where", "label = 'Sandal'", "--format", "json"])
    assert [json.loads(x)["object_id"] for x in out.output.splitlines()] == ns["table"].column("object_id").to_pylist()


def test_a_query_is_lazy_and_reusable(readme_run):
    db = readme_run["db"]
    base = db.search(ids=[3])
    narrow = base.limit(2)
    assert len(base.to_list()) == 10 and len(narrow.to_list()) == 2  # refining made a new query
    assert "ids=[3]" in repr(narrow) and "k=2" in repr(narrow)
    assert base.exact().to_list() == base.to_list()  # small catalog: the candidate stage is exact


def test_library_errors_are_simdex_errors_with_a_message(readme_run, api_folder, tmp_path, monkeypatch):
    db = readme_run["db"]
    with pytest.raises(simdex.SearchError, match="no object 1000000000"):
        db.search(ids=[10**9]).to_list()
    with pytest.raises(simdex.SimdexError, match="exactly one of ids=, image=, features="):
        db.search(ids=[1], image="boot.png")
    with pytest.raises(simdex.SimdexError, match="bad --where predicate"):
        db.search(ids=[1]).where("nope = 1").to_list()
    with pytest.raises(simdex.SimdexError, match="limit must be"):
        db.search(ids=[1]).limit(0)
    with pytest.raises(simdex.CatalogError, match="no catalog at"):
        simdex.open(tmp_path / "missing")
    with pytest.raises(simdex.BuildError, match="unknown build option"):
        simdex.build(api_folder / "cat", retian=0.9)
    with pytest.raises(simdex.SimdexError, match="unknown index option"):
        simdex.index(api_folder / "images", tmp_path / "c2", batchsize=3)
    with pytest.raises(simdex.QueryImageError, match="cannot read"):
        db.search(image=str(api_folder / "README-missing.png")).to_list()
    monkeypatch.setitem(sys.modules, "polars", None)  # as if polars were not installed
    with pytest.raises(simdex.MissingDependencyError, match=r"pip install 'simdex\[polars\]'"):
        db.search(ids=[1]).to_polars()
    assert issubclass(simdex.MissingDependencyError, ImportError)


def test_import_simdex_is_light_and_a_search_by_id_needs_no_torch(readme_run, api_folder):
    code = ("import sys, simdex\n"
            "light = [m for m in ('numpy', 'pyarrow', 'torch', 'duckdb', 'faiss') if m in sys.modules]\n"
            f"hits = simdex.open({str(api_folder / 'cat')!r}).search(ids=[42]).limit(3).to_list()\n"
            "print('LIGHT', light, 'TORCH', 'torch' in sys.modules, hits[0]['object_id'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LIGHT [] TORCH False 42" in out.stdout, out.stdout + out.stderr
