"""An HTML report of a catalog's build and example queries (what `simdex demo` shows).

Pictures: contact sheets of each query and its results with their P (the paper's
Fig. 5/6), the model's training curves, the per-layer pruning table (Table III), the
share of Ω per layer (Fig. 4) and, when given, the retrieval evaluation table.
Everything is written into one folder: index.html and its PNG files.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa


@dataclass
class Example:
    """One query shown in the report: its title, query ids, membership and result table."""

    title: str
    query_ids: list[int]
    membership: str
    results: pa.Table  # rank, object_id, score, label, source, …


def omega_by_layer(searcher) -> list[tuple[str, float, int]]:
    """(layer, Σ ω over its kept features, number kept) for every layer of φ, in φ's order."""
    out = []
    for i, p in enumerate(searcher.catalog.phi):
        sel = searcher.layer_of_kept == i
        out.append((p["name"], float(searcher.omega[sel].sum()), int(sel.sum())))
    return out


def _table_html(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out_dir: str | Path, searcher, examples: list[Example], curves_png: Path | None = None,
                 training_rows: list[dict] | None = None, evaluation: dict | None = None,
                 notes: list[str] | None = None) -> Path:
    """Write index.html and its pictures into `out_dir`; returns the path of index.html."""
    from simdex.indexer.plots import bar_chart
    from simdex.sheet import draw_result_sheet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = searcher.info
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>simdex report</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:right}th{background:#f3f3f3}img{border:1px solid #ddd;margin:4px 0}"
             "</style></head><body>",
             "<h1>simdex report</h1>",
             f"<p>Catalog <code>{html.escape(str(searcher.catalog.root))}</code>: {info['objects']:,} objects, "
             f"build <code>{html.escape(searcher.version)}</code>, {info['kept']} kept features of "
             f"{info['num_features']} ({info['active']} active), Ω = {html.escape(info['omega']['estimator'])} "
             f"from {html.escape(str(info['omega'].get('classes_from')))} ({html.escape(str(info['omega'].get('rows')))}), "
             f"τ = {info['config']['tau']}, candidate stage recall@10 = "
             + ("not measured" if info["recall"]["recall_at_10_mean"] is None
                else f"{info['recall']['recall_at_10_mean']:.3f}") + ".</p>"]
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")

    parts.append("<h2>Example queries</h2><p>Each sheet shows the query object(s) in the first row, then the "
                 "ten most similar objects of the training split with their probabilistic similarity P.</p>")
    for i, ex in enumerate(examples):
        png = draw_result_sheet(searcher, ex.results, out / f"query_{i:02d}.png", query_ids=ex.query_ids,
                                tile=84, columns=5)
        labels = ex.results.column("label").to_pylist() if "label" in ex.results.column_names else []
        parts.append(f"<h3>{html.escape(ex.title)}</h3><p>membership: {ex.membership}; result labels: "
                     f"{html.escape(', '.join(str(x) for x in labels))}</p><img src='{png.name}'>")

    if curves_png is not None and Path(curves_png).is_file():
        shutil.copyfile(curves_png, out / "training_curves.png")
        parts.append("<h2>Training of the model</h2><p>Task loss, validation Dice and R_sp^0 per epoch "
                     "(the paper's Table II).</p><img src='training_curves.png'>")
    if training_rows:
        keys = ["epoch", "val_task_loss", "val_dice", "val_r_sp0"]
        parts.append(_table_html(keys, [[r.get(k, "") for k in keys] for r in training_rows]))

    t3 = info["table_iii"]
    parts.append("<h2>Pruning (the paper's Table III)</h2>")
    parts.append(_table_html(["layer", "initial", "active", "kept"],
                             [[r["layer"], r["initial"], r["active"], r["kept"]] for r in t3]))

    layers = omega_by_layer(searcher)
    bar_chart(out / "omega_layers.png", [name for name, _, _ in layers], [w for _, w, _ in layers],
              "share of Omega per layer of phi (the paper's Fig. 4)")
    parts.append("<h2>Ω over the layers (the paper's Fig. 4)</h2><img src='omega_layers.png'>")
    parts.append(_table_html(["layer", "Σ ω", "kept features"], [[n, f"{w:.4f}", k] for n, w, k in layers]))

    if evaluation:
        ks = evaluation["ks"]
        parts.append(f"<h2>Retrieval quality</h2><p>{evaluation['queries']} queries from the "
                     f"{html.escape(evaluation['query_split'])} split ranked against {evaluation['gallery']:,} "
                     f"objects of the {html.escape(evaluation['gallery_split'])} split; relevant = same label.</p>")
        rows = [[name] + [f"{m[f'p@{k}']:.4f}" for k in ks] + [f"{m['map']:.4f}"]
                for name, m in evaluation["results"].items()]
        parts.append(_table_html(["ranking"] + [f"P@{k}" for k in ks] + ["mAP"], rows))
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
