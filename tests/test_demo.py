"""The demo job end to end on a small Fashion-MNIST-like IDX folder and a tiny model."""

from __future__ import annotations

from pathlib import Path

from simdex.demo import run_demo
from simdex.indexer.checkpoint import save_model
from synth import controlled_model, fashion_like_folder


def test_demo_writes_a_report_and_reuses_its_catalog(tmp_path):
    data = tmp_path / "data"
    fashion_like_folder(data, train=200, test=60)
    model = tmp_path / "tiny.pt"
    save_model(controlled_model(), model)
    stages = []
    first = run_demo(tmp_path / "cat", tmp_path / "report", eval_queries=20, source=str(data), model=model,
                     stage=stages.append)
    assert first.indexed_images == 260 and first.built
    html = first.report.read_text()
    # one query per class (classes 0, 1, 2 of Fashion-MNIST's names) and no trapezoid (no ankle boots)
    for name in ("T-shirt/top", "Trouser", "Pullover", "Table III", "Fig. 4", "Retrieval quality", "mAP"):
        assert name in html, name
    pngs = sorted(p.name for p in first.report.parent.glob("*.png"))
    assert pngs == ["explain_map.png", "omega_layers.png", "query_00.png", "query_01.png", "query_02.png"]
    assert "Where similarity comes from" in html and "Every image's map sums to P" in html
    assert first.evaluation["queries"] == 20

    second = run_demo(tmp_path / "cat", tmp_path / "report", eval_queries=0, source=str(data), model=model)
    assert second.indexed_images == 0 and not second.built
    assert "build is up to date: reused" not in stages


def test_demos_of_both_catalogs_link_their_reports(tmp_path, monkeypatch):
    from simdex.demo import run_demos
    from simdex.indexer.scenes import ScenesConfig

    data = tmp_path / "data"
    fashion_like_folder(data, train=120, test=40)
    monkeypatch.setenv("SIMDEX_FASHION_MNIST", str(data))
    model = tmp_path / "tiny.pt"
    save_model(controlled_model(), model)
    small = ScenesConfig(train_items=20, train_copies=2, plain_fmnist=0, test_items=6, test_copies=3)
    fm, sc = run_demos(tmp_path / "cats", tmp_path / "report", eval_queries=6, fmnist_train=100, fmnist_test=30,
                       scenes_dir=tmp_path / "scenes", scenes_config=small, model=model)
    assert fm.indexed_images == 130 and sc.indexed_images == 20 * 2 + 6 * 3
    assert fm.report == tmp_path / "report" / "index.html" and "scenes/index.html" in fm.report.read_text()
    html = sc.report.read_text()
    assert sc.report == tmp_path / "report" / "scenes" / "index.html" and "../index.html" in html
    assert "relevant = same\ninstance" in html and sc.evaluation["label_column"] == "instance"
    assert "simdex query --omega instance" in html  # the examples ranked with the build's instance Ω
    assert sc.evaluation["build_omega"].endswith("for instance")
    assert sc.evaluation["query_split"] == "query" and sc.evaluation["gallery_split"] == "gallery"
    again = run_demos(tmp_path / "cats", tmp_path / "report", eval_queries=0, fmnist_train=100, fmnist_test=30,
                      scenes_dir=tmp_path / "scenes", scenes_config=small, model=model)
    assert [r.indexed_images for r in again] == [0, 0] and not any(r.built for r in again)


def test_make_demo_data_step_finds_installed_fashion_mnist(tmp_path):
    """`make demo`'s data step (scripts/get-fashion-mnist.sh) must see data that is there, not
    go on to apt or the network (it imported a package name simdex no longer has)."""
    import os
    import subprocess
    import sys

    fashion_like_folder(tmp_path / "fm", train=5, test=5)
    out = subprocess.run(["bash", "scripts/get-fashion-mnist.sh", sys.executable], capture_output=True, text=True,
                         env={**os.environ, "SIMDEX_FASHION_MNIST": str(tmp_path / "fm")},
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr
