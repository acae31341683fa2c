"""τ and learned Ω fitted together: what `simdex build --tau auto` chooses between, measured on test queries.

Every fuzzy ranking weighs memberships g = exp(−((z − z_q)/τ)²), so the width τ and the weights Ω
answer one question. For each τ of `--taus`, learned Ω is fitted (`engine.omega_learned.learn_omega`
with the build's settings, on the gallery's labels only) with each count of fit queries of
`--fit-queries`, and ranked beside eq. 5 Ω at that τ; raw pixels, the cosine of raw vectors and L2
of z-scores (which have no τ) are ranked once. The queries and gallery are `simdex eval`'s (the
catalog's current build: its z-scores and kept features; `--query-split`, `--gallery-split`,
`--label-column`, `--queries`). The paired differences against pixels and the cosine are those of
`simdex eval` (mean of per-query differences, 95 % interval).

    .venv/bin/python benchmarks/bench_tau.py --catalog CAT --name tau_fmnist70k          # Fashion-MNIST
    .venv/bin/python benchmarks/bench_tau.py --catalog SCENES --name tau_scenes_instance \\
        --label-column instance --query-split query --gallery-split gallery --queries 0

Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from simdex import evaluate as ev
from simdex.engine.omega_learned import LearnedOmegaConfig, learn_omega
from simdex.engine.searcher import Searcher

RESULTS = Path(__file__).resolve().parent / "results"
KS = (1, 10, 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True, type=Path)
    ap.add_argument("--name", required=True, help="result file stem in benchmarks/results")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.4])
    ap.add_argument("--fit-queries", type=int, nargs="+", default=[224, 1024],
                    help="learned Ω's fit queries (224: what 24M pair values allowed 1,113 features before)")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--query-split", default="test")
    ap.add_argument("--gallery-split", default="train")
    ap.add_argument("--queries", type=int, default=1000, help="0: every object of the query split")
    args = ap.parse_args()

    s = Searcher.open(args.catalog)
    cfg = ev.EvalConfig(label_column=args.label_column, query_split=args.query_split,
                        gallery_split=args.gallery_split, num_queries=args.queries)
    labels, sources, q_rows, g_rows, _ = ev._queries_and_gallery(s, cfg)
    zq, zg = np.asarray(s.Z[q_rows]), np.asarray(s.Z[g_rows])
    lq, lg = labels[q_rows], labels[g_rows]
    eq5 = ev._gallery_omegas(zg, lg, s.v1, ["fuzzy P, Ω eq. 5"])["fuzzy P, Ω eq. 5"]  # as `simdex eval` fits it
    channels = int((s.catalog.info.get("config") or {}).get("in_channels", 1))
    pq, pg = ev._pixels(list(sources[q_rows]), channels), ev._pixels(list(sources[g_rows]), channels)
    raw_q, raw_g = ev._raw_vectors(s.catalog, np.asarray(s.object_ids), q_rows, g_rows, lambda *a: None)
    base = ev.rank_queries(zq, zg, lq, lg, {}, 1.0, raw_q, raw_g, pq, pg, KS, os.cpu_count() or 1)
    others = ev.summarise(base, KS)
    rows = []
    for tau in args.taus:
        omegas, fits = {"eq. 5": eq5}, {}
        for fq in args.fit_queries:
            t0 = time.perf_counter()
            fit = learn_omega(zg, lg.astype(object), tau,
                              replace(LearnedOmegaConfig(), fit_queries=fq, max_pair_values=10**12))
            omegas[f"learned, {fq} fit queries"] = fit.omega.astype(np.float32)
            fits[fq] = {"strength": fit.strength, "held_out_map": fit.validation["learned"]["map"],
                        "fit_queries": fit.record["fit_queries"], "seconds": time.perf_counter() - t0}
        per = ev.rank_queries(zq, zg, lq, lg, omegas, tau, None, None, None, None, KS, os.cpu_count() or 1)
        per = [{**a, **{k: v for k, v in b.items() if k != "L2, z-scored kept features"}} for a, b in zip(per, base)]
        res = ev.summarise(per, KS)
        for name in omegas:
            paired = ev.paired_differences(per, name, KS)
            fq = int(name.split(", ")[1].split()[0]) if name.startswith("learned") else None
            rows.append({"tau": tau, "omega": name, **{m: res[name][m] for m in ("p@1", "p@10", "map")},
                         "minus_pixels": {m: paired["L2, raw pixels"][m] for m in ("p@10", "map")},
                         "minus_cosine": {m: paired["cosine, raw vectors"][m] for m in ("p@10", "map")},
                         **({"fit": fits[fq]} if fq else {})})
            print(f"τ {tau:g} {name}: P@1 {res[name]['p@1']:.4f} P@10 {res[name]['p@10']:.4f} "
                  f"mAP {res[name]['map']:.4f}", flush=True)
    out = {"catalog": str(args.catalog), "build": s.version, "build_tau": s.tau, "queries": len(q_rows),
           "gallery": len(g_rows), "label_column": args.label_column, "query_split": args.query_split,
           "gallery_split": args.gallery_split, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "no_tau": {k: {m: v[m] for m in ("p@1", "p@10", "map")} for k, v in others.items()}, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(out, args))
    print(markdown(out, args))


def markdown(out: dict, args) -> str:
    lines = [f"# {args.name}", "",
             f"{out['queries']:,} queries ({out['query_split']}) against {out['gallery']:,} gallery objects "
             f"({out['gallery_split']}), relevant = same `{out['label_column']}`; the catalog's build "
             f"{out['build']} (its z-scores; built at τ {out['build_tau']:g}); {out['date']}.", "",
             "| τ | Ω | P@1 | P@10 | mAP | minus pixels: P@10 | mAP | minus cosine: P@10 | mAP | held-out mAP, λ |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in out["rows"]:
        fit = f"{r['fit']['held_out_map']:.4f}, {r['fit']['strength']:g}" if "fit" in r else ""
        lines.append(f"| {r['tau']:g} | {r['omega']} | {r['p@1']:.4f} | {r['p@10']:.4f} | {r['map']:.4f} | "
                     f"{ev.format_difference(r['minus_pixels']['p@10'])} | {ev.format_difference(r['minus_pixels']['map'])} | "
                     f"{ev.format_difference(r['minus_cosine']['p@10'])} | {ev.format_difference(r['minus_cosine']['map'])} | {fit} |")
    lines += ["", "Without τ:", "", "| ranking | P@1 | P@10 | mAP |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['p@1']:.4f} | {v['p@10']:.4f} | {v['map']:.4f} |" for k, v in out["no_tau"].items()]
    cmd = f"--catalog CAT --name {args.name}" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("label_column", args.label_column),
                                                    ("query_split", args.query_split),
                                                    ("gallery_split", args.gallery_split),
                                                    ("queries", args.queries)))
    cmd += " --taus " + " ".join(f"{t:g}" for t in args.taus) + " --fit-queries " + " ".join(map(str, args.fit_queries))
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/bench_tau.py {cmd}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
