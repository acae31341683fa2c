"""Retrieval with and without permutation invariance (Wald et al.) on the scenes benchmark.

For each query object (split `query` of a scenes catalog), the best `--candidates` gallery
objects by fuzzy P (`simdex query`), then the same candidates re-ordered by their semantic,
permutation-invariant similarity to the query (`simdex query --permutation-invariant`: Pearson's
r of the responses of one layer, pooled to a g×g grid of the object's window, after the
optimal assignment of positions). Both orders are scored with instance labels (an item's
other copies, in other positions, sizes and rotations): P@1, P@10 and AP over the candidate
list (normalised by the relevant objects it could hold), so the two differ only by the order.

    simdex scenes --out data/scenes
    .venv/bin/python benchmarks/bench_scenes.py --work /tmp/bs --keep     # makes WORK/scenes-mask
    .venv/bin/python benchmarks/bench_permutation_retrieval.py --catalog /tmp/bs/scenes-mask

Writes benchmarks/results/bench_permutation_retrieval.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def scores(relevant: np.ndarray, total_relevant: int) -> dict:
    hits = np.flatnonzero(relevant)
    denom = max(1, min(total_relevant, len(relevant)))
    ap = float(np.sum(np.arange(1, len(hits) + 1) / (hits + 1)) / denom) if len(hits) else 0.0
    return {"p@1": float(relevant[:1].mean()), "p@10": float(relevant[:10].mean()), "ap": ap}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--queries", type=int, default=200, help="first N query objects (seeded order)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--label-column", default="instance")
    ap.add_argument("--query-split", default="query")
    ap.add_argument("--gallery-split", default="gallery")
    ap.add_argument("--layer", default=None, help="layer of the responses (default: the rerank's default)")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from simdex.engine.searcher import Searcher
    from simdex.permutation_search import permutation_rerank

    searcher = Searcher.open(args.catalog)
    t = searcher.catalog.read_objects(["object_id", args.label_column, "split"]).to_pydict()
    ids = np.asarray(t["object_id"])
    labels = np.asarray(t[args.label_column], dtype=object)
    split = np.asarray(t["split"], dtype=object)
    queries = ids[split == args.query_split]
    rng = np.random.default_rng(args.seed)
    queries = np.sort(rng.permutation(queries)[: args.queries])
    gallery_count: dict = {}
    for lab in labels[split == args.gallery_split]:
        gallery_count[lab] = gallery_count.get(lab, 0) + 1
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    where = f"split = '{args.gallery_split}'"
    by_p, by_pi, seconds = [], [], []
    for q in queries.tolist():
        hits = searcher.search(ids=[q], k=args.candidates, where=where)
        query_rows = searcher.metadata(np.asarray([q]), ["source", "component"]).to_pylist()
        t0 = time.perf_counter()
        re = permutation_rerank(searcher, hits, query_rows, args.candidates, layer=args.layer, grid=args.grid)
        seconds.append(time.perf_counter() - t0)
        total = gallery_count.get(label_of[q], 0)
        for table, out in ((hits, by_p), (re, by_pi)):
            rel = np.array([label_of[i] == label_of[q] for i in table.column("object_id").to_pylist()])
            out.append(scores(rel, total))
    mean = {name: {m: round(float(np.mean([r[m] for r in rows])), 4) for m in ("p@1", "p@10", "ap")}
            for name, rows in (("fuzzy P", by_p), ("fuzzy P, then permutation-invariant rerank", by_pi))}
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "catalog": str(args.catalog),
           "build": searcher.version, "region": searcher.catalog.region, "queries": int(len(queries)),
           "candidates": args.candidates, "label_column": args.label_column, "grid": args.grid,
           "layer": args.layer or "default", "rerank_seconds_median": round(float(np.median(seconds)), 3),
           "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "results": mean}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_permutation_retrieval.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# bench_permutation_retrieval ({res['date']})", "",
             f"{res['queries']} queries ({args.query_split}) of a scenes catalog (region {res['region']}), the best "
             f"{args.candidates} {args.gallery_split} objects by fuzzy P, relevant = same {args.label_column}; "
             f"rerank: layer {res['layer']}, {args.grid}×{args.grid} positions, optimal assignment; median "
             f"{res['rerank_seconds_median']} s per query (the model re-runs on the candidates). {res['machine']}.",
             "", "| order | P@1 | P@10 | AP@candidates |", "|---|---:|---:|---:|"]
    for name, m in mean.items():
        lines.append(f"| {name} | {m['p@1']:.3f} | {m['p@10']:.3f} | {m['ap']:.3f} |")
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/bench_permutation_retrieval.py --catalog CATALOG "
              f"--queries {args.queries} --candidates {args.candidates}`", ""]
    (RESULTS / "bench_permutation_retrieval.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
