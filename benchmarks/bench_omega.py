"""Learned Ω against eq. 5, Welch and uniform Ω, and feature selection, on a Fashion-MNIST catalog.

For each pruning rule the catalog is built (`simdex build`, default Ω = auto) and then
evaluated as `simdex eval` does (simdex.evaluate): 1,000 seeded test queries ranked
against the 60,000 training objects, relevant = same label; every Ω of the table is
estimated on the gallery's (training) labels, never on the queries'. The rules:

- `retain 0.99`: the paper's v1 rule (the kept features carry 0.99 of Σ v1²);
- `retain 1.0`: every active feature;
- selection by separation, on the `retain 1.0` build: the smallest set of features
  carrying `--mass` of the learned (or eq. 5) weights, then learned Ω refitted on
  that set (columns of the build's z; no rebuild needed to measure it).

Pixels (L2 of the raw pixels, the floor to beat) and the cosine of the raw object vectors
are evaluated once, on the `retain 1.0` build's query and gallery rows.

    .venv/bin/simdex index fashion-mnist --catalog /tmp/omega_work/fmnist    # once, ≈ 2 min
    .venv/bin/python benchmarks/bench_omega.py --catalog /tmp/omega_work/fmnist   # ≈ 10 min on 2 busy cores

The catalog's current build is replaced (the last rule built stays current). Writes
benchmarks/results/bench_omega.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import Catalog
from simdex.engine.omega import ClassStats, OmegaInputs, make_omega
from simdex.engine.omega_learned import LearnedOmegaConfig, learn_omega
from simdex.engine.searcher import Searcher
from simdex.evaluate import METHODS, EvalConfig, _queries_and_gallery, evaluate, evaluate_arrays

RESULTS = Path(__file__).resolve().parent / "results"
FUZZY = ("fuzzy P, Ω learned", "fuzzy P, Ω eq. 5", "fuzzy P, Ω Welch", "fuzzy P, Ω uniform", "fuzzy P, build's Ω",
         "L2, z-scored kept features")


def _mass_subset(weights: np.ndarray, mass: float) -> np.ndarray:
    """Smallest set of columns whose weights sum to `mass` (sorted column numbers)."""
    order = np.argsort(-weights, kind="stable")
    n = int(np.searchsorted(np.cumsum(weights[order]), mass - 1e-12) + 1)
    return np.sort(order[: min(n, len(weights))])


def selection_variants(root: Path, cfg: EvalConfig, masses: list[float]) -> list[dict]:
    """Fuzzy P with learned Ω refitted on the features that carry `mass` of the learned / eq. 5 weights."""
    searcher = Searcher.open(root)
    labels, _, q_rows, g_rows, _ = _queries_and_gallery(searcher, cfg)
    Z = searcher.Z
    zq, zg = np.asarray(Z[q_rows]), np.asarray(Z[g_rows])
    lq, lg = labels[q_rows], labels[g_rows]
    d = Z.shape[1]
    stats = ClassStats(d)
    stats.update(zg, lg)
    weights = {"learned": learn_omega(zg, lg, searcher.tau, LearnedOmegaConfig(seed=cfg.seed)).omega,
               "eq. 5": make_omega("clusters").estimate(OmegaInputs(dim=d, class_stats=stats))}
    out = []
    for rule, w in weights.items():
        for mass in masses:
            cols = _mass_subset(w, mass)
            t0 = time.perf_counter()
            refit = learn_omega(zg[:, cols], lg, searcher.tau, LearnedOmegaConfig(seed=cfg.seed)).omega
            fit_s = time.perf_counter() - t0
            res = evaluate_arrays(zq[:, cols], zg[:, cols], lq, lg, {"fuzzy P, Ω learned": refit.astype(np.float32)},
                                  searcher.tau, ks=cfg.ks, threads=cfg.threads)
            out.append({"rule": f"{rule} weights, mass {mass:g}", "features": int(len(cols)), "fit_s": fit_s,
                        "results": {"fuzzy P, Ω learned": res["fuzzy P, Ω learned"],
                                    "L2, z-scored kept features": res["L2, z-scored kept features"]}})
            print(f"  {out[-1]['rule']}: {len(cols)} features, P@10 {res['fuzzy P, Ω learned']['p@10']:.4f}, "
                  f"mAP {res['fuzzy P, Ω learned']['map']:.4f}", flush=True)
    return out


def markdown(report: dict) -> str:
    lines = [f"# bench_omega: {report['catalog']} ({report['queries']} test queries vs {report['gallery']} train)",
             "", f"machine: {report['machine']}", ""]
    for b in report["builds"]:
        o = b["omega"]
        lines += [f"## retain {b['retain']:g}: {b['kept']} kept of {b['active']} active features, "
                  f"build {b['build_s']:.1f} s, build's Ω = {o['estimator']}", ""]
        if o.get("choice"):
            lines += [f"auto's choice: {o['choice']}", ""]
        if o.get("learned"):
            lf = o["learned"]
            lines += [f"learned Ω at build time: λ = {lf['strength']:g}, {lf['fit_rows']} fit rows, "
                      f"{lf['validation_queries']} held-out queries, {lf['seconds']:.1f} s", ""]
        lines += ["| ranking | P@1 | P@10 | P@100 | mAP |", "|---|---:|---:|---:|---:|"]
        for name, m in b["results"].items():
            lines.append(f"| {name} | {m['p@1']:.4f} | {m['p@10']:.4f} | {m['p@100']:.4f} | {m['map']:.4f} |")
        lines.append("")
    if report["selection"]:
        lines += ["## selection by separation (on the retain 1.0 build, learned Ω refitted on the subset)", "",
                  "| rule | features | fuzzy P learned P@1 | P@10 | mAP | L2 of z P@10 | mAP |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for v in report["selection"]:
            f, z = v["results"]["fuzzy P, Ω learned"], v["results"]["L2, z-scored kept features"]
            lines.append(f"| {v['rule']} | {v['features']} | {f['p@1']:.4f} | {f['p@10']:.4f} | {f['map']:.4f} | "
                         f"{z['p@10']:.4f} | {z['map']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", type=Path, default=Path("/tmp/omega_work/fmnist"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--retain", type=float, nargs="+", default=[0.99, 1.0], help="pruning rules built (last: current)")
    ap.add_argument("--mass", type=float, nargs="*", default=[0.95, 0.99], help="selection masses (empty: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    cfg = EvalConfig(num_queries=args.queries, ks=(1, 10, 100), seed=args.seed)
    report = {"catalog": str(args.catalog), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, {platform.python_version()}", "builds": [], "selection": []}
    for i, retain in enumerate(args.retain):
        t0 = time.perf_counter()
        result = build(Catalog.open(args.catalog), BuildConfig(retain=retain, seed=args.seed))
        build_s = time.perf_counter() - t0
        last = i == len(args.retain) - 1
        methods = METHODS if last else tuple(m for m in METHODS if m in FUZZY)
        t0 = time.perf_counter()
        ev = evaluate(args.catalog, EvalConfig(**{**cfg.__dict__, "methods": methods}))
        report["queries"], report["gallery"] = ev["queries"], ev["gallery"]
        report["builds"].append({"retain": retain, "kept": result.info["kept"], "active": result.info["active"],
                                 "build_s": build_s, "eval_s": time.perf_counter() - t0,
                                 "omega": result.info["omega"], "results": ev["results"]})
        print(f"retain {retain}: {result.info['kept']} kept, Ω {result.info['omega']['estimator']}, "
              + ", ".join(f"{k} P@10 {v['p@10']:.4f} mAP {v['map']:.4f}" for k, v in ev["results"].items()),
              flush=True)
    if args.mass:
        report["selection"] = selection_variants(args.catalog, cfg, args.mass)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_omega.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=float))
    (args.out / "bench_omega.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
