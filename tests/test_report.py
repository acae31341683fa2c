"""The HTML report: rendered from its template with every value escaped."""

from __future__ import annotations

from synth_catalog import append_objects, class_objects, new_catalog

from simdex.engine.build import build
from simdex.engine.searcher import Searcher
from simdex.report import Example, write_report

LAYERS = [("C11", 6), ("C12", 6), ("C21", 8)]


def test_report_escapes_what_it_shows(tmp_path):
    cat = new_catalog(tmp_path / "cat", LAYERS)
    classes = ["<b>bold</b>", "a & b"]
    x, labels = class_objects(60, 1, classes, 20)
    append_objects(cat, x, labels, "a")
    build(cat)
    s = Searcher.open(cat.root)
    results = s.search(ids=[0], k=5)
    index = write_report(tmp_path / "report", s, [Example("query <0>", [0], "gaussian", results)],
                         notes=["<script>alert(1)</script>"],
                         evaluation={"ks": [1], "queries": 3, "query_split": "test", "gallery": 1200,
                                     "gallery_split": "train", "results": {"fuzzy <P>": {"p@1": 0.5, "map": 0.25}}})
    html = index.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and ("&lt;b&gt;bold&lt;/b&gt;" in html or "a &amp; b" in html)
    assert "query &lt;0&gt;" in html and "fuzzy &lt;P&gt;" in html and "1,200 objects" in html
    assert html.count("<table>") == 3  # Table III, Ω per layer, evaluation
    assert "<img src='query_00.png'>" in html and (tmp_path / "report" / "query_00.png").is_file()
