"""An HTML report of a catalog's build and example queries (what `simdex demo` shows).

Pictures: contact sheets of each query and its results with their P (the paper's
Fig. 5/6), the model's training curves, the per-layer pruning table (Table III), the
share of Ω per layer (Fig. 4), the similarity maps of one query and its best answer
(Stylianou et al.: where on both images P comes from) and, when given, the retrieval
evaluation table.
Everything is written into one folder: index.html and its PNG files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from simdex.engine.pruning import table_iii_by_layer


@dataclass
class Example:
    """One query shown in the report: its title, query ids, membership and result table."""

    title: str
    query_ids: list[int]
    membership: str
    results: pa.Table  # rank, object_id, score, label, source, …


def omega_by_layer(searcher, omega: str | None = None) -> list[tuple[str, float, int]]:
    """(layer, Σ ω over its kept features, number kept) for every layer of φ, in φ's order; of the
    build's Ω or the one `omega` names (`Searcher.omega_named`)."""
    weights = searcher.omega_named(omega)
    out = []
    for i, p in enumerate(searcher.catalog.phi):
        sel = searcher.layer_of_kept == i
        out.append((p["name"], float(weights[sel].sum()), int(sel.sum())))
    return out


def write_report(out_dir: str | Path, searcher, examples: list[Example], curves_png: Path | None = None,
                 training_rows: list[dict] | None = None, evaluation: dict | None = None,
                 notes: list[str] | None = None, explain: bool = True, title: str = "simdex report",
                 gallery_text: str = "the training split", links: list[dict] | None = None,
                 omega: str | None = None) -> Path:
    """Write index.html and its pictures into `out_dir`; returns the path of index.html.

    The markup is `templates/report.html`, rendered by Jinja2 with autoescaping: every value
    (labels, paths, notes) is escaped, whatever it holds. `explain` draws the similarity maps of
    the first single-object example and its best answer (re-runs the model on both images).
    `links` ({"href", "text"}) lead to other pages, e.g. the report of another catalog. `omega`: the
    Ω the examples were ranked with (a label column's, e.g. instance), drawn and explained with it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = searcher.info
    recall = info["recall"]["recall_at_10_mean"]
    context = {
        "title": title, "links": links or [], "gallery_text": gallery_text,
        "catalog": str(searcher.catalog.root), "version": searcher.version, "info": info,
        "recall": "not measured" if recall is None else f"{recall:.3f}", "notes": notes or [],
        "examples": _draw_examples(out, searcher, examples),
        "curves": _copy_curves(out, curves_png), "training": _training_table(training_rows),
        "table_iii": [[r["layer"], r["initial"], r["active"], r["kept"]] for r in table_iii_by_layer(info["table_iii"])],
        "omega_png": "omega_layers.png", "omega_layers": _draw_omega_layers(out, searcher, omega),
        "query_omega": omega, "evaluation": _evaluation_table(evaluation),
        "explanation": _draw_explanation(out, searcher, examples, omega) if explain else None,
    }
    index = out / "index.html"
    index.write_text(_template().render(**context), encoding="utf-8")
    return index


def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("simdex", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("report.html")


def _draw_examples(out: Path, searcher, examples: list[Example]) -> list[dict]:
    """A contact sheet per example query (query_NN.png) and what the page says about it."""
    from simdex.sheet import draw_result_sheet

    drawn = []
    for i, ex in enumerate(examples):
        png = draw_result_sheet(searcher, ex.results, out / f"query_{i:02d}.png", query_ids=ex.query_ids,
                                tile=84, columns=5)
        labels = ex.results.column("label").to_pylist() if "label" in ex.results.column_names else []
        drawn.append({"title": ex.title, "membership": ex.membership, "labels": [str(x) for x in labels],
                      "png": png.name})
    return drawn


def _draw_explanation(out: Path, searcher, examples: list[Example], omega: str | None = None) -> dict | None:
    """The similarity maps (explain_map.png) of the first example with one query and its best answer
    other than itself, with P per layer; a message instead when the images cannot be read again."""
    from simdex.explain_maps import ExplainError, draw_explanation, explain_pair

    for ex in examples:
        answers = [i for i in ex.results.column("object_id").to_pylist() if i not in ex.query_ids]
        if len(ex.query_ids) != 1 or not answers:
            continue
        try:
            e = explain_pair(searcher, ex.query_ids, answers[0], omega=omega)
        except ExplainError as exc:
            return {"error": str(exc)}
        draw_explanation(e, out / "explain_map.png")
        return {"error": None, "png": "explain_map.png", "title": ex.title, "query": ex.query_ids[0], "answer": answers[0],
                "P": f"{e.P:.4f}", "sums": [f"{im.pixel_map.sum():.4f}" for im in e.images],
                "layers": [[name, f"{part:.4f}"] for name, part in e.layer_parts.items()]}
    return None


def _copy_curves(out: Path, curves_png: Path | None) -> str | None:
    if curves_png is None or not Path(curves_png).is_file():
        return None
    shutil.copyfile(curves_png, out / "training_curves.png")
    return "training_curves.png"


def _training_table(training_rows: list[dict] | None) -> dict | None:
    if not training_rows:
        return None
    keys = ["epoch", "val_task_loss", "val_dice", "val_r_sp0"]
    return {"header": keys, "rows": [[r.get(k, "") for k in keys] for r in training_rows]}


def _draw_omega_layers(out: Path, searcher, omega: str | None = None) -> list[list]:
    """The share of Ω per layer as a bar chart (omega_layers.png) and as table rows."""
    from simdex.indexer.plots import bar_chart

    layers = omega_by_layer(searcher, omega)
    bar_chart(out / "omega_layers.png", [name for name, _, _ in layers], [w for _, w, _ in layers],
              "share of Omega per layer of phi (the paper's Fig. 4)")
    return [[n, f"{w:.4f}", k] for n, w, k in layers]


def _evaluation_table(evaluation: dict | None) -> dict | None:
    if not evaluation:
        return None
    ks = evaluation["ks"]
    rows = [[name] + [f"{m[f'p@{k}']:.4f}" for k in ks] + [f"{m['map']:.4f}"]
            for name, m in evaluation["results"].items()]
    return {"label_column": "label", **evaluation, "header": ["ranking"] + [f"P@{k}" for k in ks] + ["mAP"], "rows": rows}
