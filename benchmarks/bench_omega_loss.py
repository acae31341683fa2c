"""Is the ranking loss what keeps learned Ω below the cosine on broad classes? Two losses, one sample.

Learned Ω (`engine.omega_learned`) minimises the softmax ranking loss of neighbourhood components
analysis (NCA), which rewards putting *a* relevant candidate first: early precision. Mean average
precision rewards every relevant object ranked above every irrelevant one, which a pairwise
(AUC-style) loss states directly:

    L_q = mean over (relevant r, irrelevant i) of log(1 + exp(β (P_i − P_r))).

Both are fitted here on the same seeded sample of the gallery's labelled rows, with the same
candidates (`omega_learned._candidates`: 32 nearest, 32 random, 32 of the query's class), the same
softmax parametrisation of ω on the simplex, learned β, Adam, 200 steps and the build's λ grid of
the KL pull toward uniform; then ranked on the test queries beside eq. 5 and Welch Ω (fitted on the
gallery as `simdex eval` fits them), the cosine of raw vectors and raw pixels, at the catalog's
build τ, with `simdex eval`'s paired differences against the cosine.

    .venv/bin/python benchmarks/bench_omega_loss.py --catalog SCENES --name omega_loss_scenes_class \\
        --label-column label --query-split query --gallery-split train

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
from simdex.engine import omega_learned as ol
from simdex.engine.searcher import Searcher

RESULTS = Path(__file__).resolve().parent / "results"
KS = (1, 10)


def fit_pairwise(G: np.ndarray, relevant: np.ndarray, strengths, steps: int = 200,
                 learning_rate: float = 0.1, priors: np.ndarray | None = None) -> np.ndarray:
    """ω (S, d) on the simplex minimising the pairwise logistic loss plus λ·KL(ω ‖ prior), one row per
    λ; `omega_learned.fit_simplex_weights` with the loss swapped (the same θ, β, Adam, start and prior)."""
    lam = np.asarray(strengths, np.float64)[:, None]
    n_q, n_c, d = G.shape
    n_s = len(lam)
    Gf = G.reshape(-1, d)
    rel = relevant.astype(np.float64)
    pairs = rel[:, :, None] * (1.0 - rel)[:, None, :]  # (Q, a, b): a relevant, b irrelevant
    pairs /= pairs.sum(axis=(1, 2), keepdims=True)
    uniform_p = (Gf @ np.full(d, 1.0 / d, np.float32)).reshape(n_q, n_c)
    log_prior = ol.log_priors(priors, n_s, d)
    theta = log_prior.copy()
    log_beta = np.full(n_s, np.log(1.0 / max(float(np.mean(uniform_p.std(axis=1))), 1e-6)))
    m, v = np.zeros((n_s, d + 1)), np.zeros((n_s, d + 1))
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        w = np.exp(theta - theta.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        beta = np.exp(log_beta)[:, None, None]
        s = beta * (Gf @ w.T.astype(np.float32)).T.reshape(n_s, n_q, n_c).astype(np.float64)
        weighted = pairs[None] / (1.0 + np.exp(s[:, :, :, None] - s[:, :, None, :]))  # σ(s_b − s_a)·pair
        d_s = (weighted.sum(axis=2) - weighted.sum(axis=3)) / n_q  # ∂L/∂s (S, Q, C)
        grad_w = (Gf.T @ (d_s * beta).reshape(n_s, -1).T.astype(np.float32)).T.astype(np.float64)
        grad_w += lam * (np.log(np.maximum(w * d, 1e-300)) - log_prior + 1.0)
        grad = np.empty((n_s, d + 1))
        grad[:, :d] = w * (grad_w - np.sum(w * grad_w, axis=1, keepdims=True))
        grad[:, d] = np.sum(d_s * s, axis=(1, 2))
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        step = learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta -= step[:, :d]
        log_beta -= step[:, d]
    w = np.exp(theta - theta.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def evaluation_args(description: str) -> argparse.ArgumentParser:
    """The catalog, result name and `simdex eval`'s splits (this script's and bench_omega_ceiling's)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--catalog", required=True, type=Path)
    ap.add_argument("--name", required=True, help="result file stem in benchmarks/results")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--query-split", default="test")
    ap.add_argument("--gallery-split", default="train")
    ap.add_argument("--queries", type=int, default=0, help="0: every object of the query split")
    return ap


def evaluated_rows(s: Searcher, args, Z) -> tuple:
    """`simdex eval`'s queries and gallery for the arguments: sources, row numbers, their rows of Z (the
    stored z or a space of it, `Searcher.space_of`) and labels: (sources, q_rows, g_rows, zq, zg, lq, lg)."""
    cfg = ev.EvalConfig(label_column=args.label_column, query_split=args.query_split,
                        gallery_split=args.gallery_split, num_queries=args.queries)
    labels, sources, q_rows, g_rows, _ = ev._queries_and_gallery(s, cfg)
    zq, zg = np.asarray(Z[q_rows], np.float32), np.asarray(Z[g_rows], np.float32)
    return sources, q_rows, g_rows, zq, zg, labels[q_rows], labels[g_rows]


def rank_beside_baselines(s: Searcher, sources, q_rows, g_rows, zq, zg, lq, lg, omegas: dict, tau: float):
    """Per-query metrics (`simdex eval`'s) of fuzzy P with each Ω, the cosine of raw vectors and raw pixels."""
    channels = int((s.catalog.info.get("config") or {}).get("in_channels", 1))
    pq, pg = ev._pixels(list(sources[q_rows]), channels), ev._pixels(list(sources[g_rows]), channels)
    raw_q, raw_g = ev._raw_vectors(s.catalog, np.asarray(s.object_ids), q_rows, g_rows, lambda *a: None)
    return ev.rank_queries(zq, zg, lq, lg, omegas, tau, raw_q, raw_g, pq, pg, KS, os.cpu_count() or 1)


def ranking_table(results: dict, minus: dict, against: str) -> list[str]:
    """Markdown rows: each ranking's P@1, P@10, mAP and its paired difference from `against`."""
    lines = [f"| ranking | P@1 | P@10 | mAP | minus {against}: P@10 | mAP |", "|---|---:|---:|---:|---:|---:|"]
    for k, r in results.items():
        diff = minus.get(k)
        tail = f"{ev.format_difference(diff['p@10'])} | {ev.format_difference(diff['map'])}" if diff else " | "
        lines.append(f"| {k} | {r['p@1']:.4f} | {r['p@10']:.4f} | {r['map']:.4f} | {tail} |")
    return lines


def write_results(name: str, out: dict, text: str) -> None:
    """benchmarks/results/NAME.json (the figures) and NAME.md (the table), and the table on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def main() -> None:
    ap = evaluation_args(__doc__.split("\n\n")[0])
    ap.add_argument("--fit-queries", type=int, default=512, help="sampled fit queries (each with 96 candidates)")
    args = ap.parse_args()

    s = Searcher.open(args.catalog)
    tau = float(s.tau)
    sources, q_rows, g_rows, zq, zg, lq, lg = evaluated_rows(s, args, s.Z)
    omegas = {k.removeprefix("fuzzy P, "): v for k, v in
              ev._gallery_omegas(zg, lg, s.v1, ["fuzzy P, Ω eq. 5", "fuzzy P, Ω Welch"]).items()}

    config = replace(ol.LearnedOmegaConfig(), fit_queries=args.fit_queries, max_pair_values=10**12)
    rng = np.random.default_rng(config.seed)
    codes = ol._class_codes(lg.astype(object))
    rows, drawn = ol.sample_labelled_rows(np.arange(len(zg)), lg.astype(object), config.sample_rows, rng,
                                          config.min_partners, config.group_rows)
    G, relevant = ol._candidates(zg[rows], codes[rows], config, rng, tau)
    fits = {}
    for loss in ("NCA", "pairwise"):
        t0 = time.perf_counter()
        if loss == "NCA":
            weights, _ = ol.fit_simplex_weights(G, relevant, config.strengths, config.steps, config.learning_rate)
        else:
            weights = fit_pairwise(G, relevant, config.strengths, config.steps, config.learning_rate)
        fits[loss] = round(time.perf_counter() - t0, 1)
        for i, lam in enumerate(config.strengths):
            omegas[f"learned, {loss} loss, λ {lam:g}"] = weights[i].astype(np.float32)
        print(f"{loss}: fitted in {fits[loss]} s", flush=True)

    per = rank_beside_baselines(s, sources, q_rows, g_rows, zq, zg, lq, lg, omegas, tau)
    res = ev.summarise(per, KS)
    cosine = "cosine, raw vectors"
    paired = {k: ev.paired_differences(per, k, KS)[cosine] for k in res if k != cosine}  # ranking − cosine
    out = {"catalog": str(args.catalog), "build": s.version, "tau": tau, "queries": len(q_rows),
           "gallery": len(g_rows), "label_column": args.label_column, "query_split": args.query_split,
           "gallery_split": args.gallery_split, "sample_rows": int(len(rows)), "sample_drawn": drawn,
           "pairs": list(relevant.shape), "fit_seconds": fits,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "results": {k: {m: v[m] for m in ("p@1", "p@10", "map")} for k, v in res.items()},
           "minus_cosine": {k: {m: v[m] for m in ("p@10", "map")} for k, v in paired.items()}}
    write_results(args.name, out, markdown(out, args))


def markdown(out: dict, args) -> str:
    lines = [f"# {args.name}", "",
             f"{out['queries']:,} queries ({out['query_split']}) against {out['gallery']:,} gallery objects "
             f"({out['gallery_split']}), relevant = same `{out['label_column']}`; the catalog's build {out['build']} "
             f"(its z-scores, τ {out['tau']:g}). Learned Ω: {out['sample_rows']:,} sampled gallery rows "
             f"({out['sample_drawn']}), {out['pairs'][0]:,} fit queries × {out['pairs'][1]} candidates, both losses on "
             f"the same candidates (fits: {', '.join(f'{k} {v} s' for k, v in out['fit_seconds'].items())}); "
             f"{out['date']}.", "",
             *ranking_table(out["results"], out["minus_cosine"], "cosine")]
    cmd = (f"--catalog CAT --name {args.name} --label-column {args.label_column} --query-split {args.query_split} "
           f"--gallery-split {args.gallery_split} --queries {args.queries} --fit-queries {args.fit_queries}")
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/bench_omega_loss.py {cmd}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
