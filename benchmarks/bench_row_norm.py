"""Would a per-object normalisation of the raw vectors before z-scoring lift fuzzy P?

An object's mean activations scale with its contrast and size as much as with what it is;
retrieval engines usually divide that out (unit length, or the Hellinger map √(x/Σx) of
Fisher-vector and VLAD pipelines). simdex's build z-scores the raw means as they are. This
bench measures, on an indexed catalog with labels, fuzzy P with Welch Ω on z-scores of:

    raw         the build's input today
    l2          x / ‖x‖₂
    sqrt        √x
    hellinger   √(x / Σx)   (unit length after the square root)
    log1p       log(1 + x / mean x)

beside the cosine of the raw vectors, for the same seeded queries against the same seeded
gallery sample. Everything is numpy on the catalog's stored features; z-scores and Ω (Welch
between the gallery's classes) are computed on the gallery sample alone. It is a study for
the build (not yet an option of it): see the README's "Retrieval quality".

    .venv/bin/python benchmarks/bench_row_norm.py --catalog CAT --query-split test --gallery-split train
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from simdex.engine.catalog import Catalog
from simdex.engine.metrics import rank_metrics
from simdex.engine.omega import ClassStats, OmegaInputs, make_omega
from simdex.engine.shard_reader import column_values, feature_arrays

TRANSFORMS = {
    "raw": lambda x: x,
    "l2": lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12),
    "sqrt": np.sqrt,
    "hellinger": lambda x: np.sqrt(x / np.maximum(x.sum(1, keepdims=True), 1e-12)),
    "log1p": None,  # needs the gallery's means: see transform()
}


def transform(name: str, x: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    if name == "log1p":
        return np.log1p(x / np.maximum(x[gallery].mean(0), 1e-6))
    return TRANSFORMS[name](x)


def load(catalog: str, label_column: str):
    cat = Catalog.open(catalog)
    xs, labels, splits = [], [], []
    for batch in cat.shards().batches(["object_id", "features", label_column, "split"]):
        xs.append(feature_arrays(batch, cat.num_features)[1])
        labels.append(column_values(batch, label_column))
        splits.append(column_values(batch, "split"))
    x = np.concatenate(xs)
    return np.ascontiguousarray(x[:, (x > 0).any(0)]), np.concatenate(labels), np.concatenate(splits)


def fuzzy_welch(f: np.ndarray, labels, q, g, tau: float) -> list[dict]:
    mu, sd = f[g].mean(0), f[g].std(0)
    z = ((f - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
    stats = ClassStats(z.shape[1])
    stats.update(z[g], labels[g].astype(object))
    omega = make_omega("welch").estimate(OmegaInputs(dim=z.shape[1], class_stats=stats)).astype(np.float32)
    zg = z[g]
    out = []
    for qi in q:
        d = (zg - z[qi]) * np.float32(1.0 / tau)
        out.append(rank_metrics(np.exp(-d * d) @ omega, labels[g] == labels[qi], ks=(1, 10)))
    return out


def cosine(x: np.ndarray, labels, q, g) -> list[dict]:
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return [rank_metrics(u[g] @ u[qi], labels[g] == labels[qi], ks=(1, 10)) for qi in q]


def summary(res: list[dict]) -> dict:
    return {"p@1": float(np.mean([r["p@1"] for r in res])), "p@10": float(np.mean([r["p@10"] for r in res])),
            "map": float(np.mean([r["ap"] for r in res]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", action="append", required=True, help="indexed catalog (repeat for several)")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--query-split", default="test")
    ap.add_argument("--gallery-split", default="train")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--gallery", type=int, default=4000)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="bench_row_norm")
    args = ap.parse_args()

    runs = []
    for catalog in args.catalog:
        t0 = time.perf_counter()
        x, labels, splits = load(catalog, args.label_column)
        rng = np.random.default_rng(args.seed)
        q = np.flatnonzero(splits == args.query_split)
        g = np.flatnonzero(splits == args.gallery_split)
        q = np.sort(rng.choice(q, min(len(q), args.queries), replace=False))
        g = np.sort(rng.choice(g, min(len(g), args.gallery), replace=False))
        results = {"cosine, raw vectors": summary(cosine(x, labels, q, g))}
        for name in TRANSFORMS:
            results[f"fuzzy P, Ω Welch, {name}"] = summary(fuzzy_welch(transform(name, x, g), labels, q, g, args.tau))
        runs.append({"catalog": catalog, "features": int(x.shape[1]), "queries": int(len(q)),
                     "gallery": int(len(g)), "results": results, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(runs[-1]), flush=True)

    out = Path(__file__).parent / "results"
    (out / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
    lines = [f"# {args.name}", "", f"Fuzzy P (Welch Ω, τ = {args.tau:g}) on z-scores of per-object transforms of "
             f"the raw vectors, against the cosine of the raw vectors; relevant = same `{args.label_column}`.", ""]
    for run in runs:
        lines += [f"## {run['catalog']}: {run['queries']} {args.query_split} queries vs {run['gallery']} "
                  f"{args.gallery_split} objects (seeded samples), {run['features']} active features", "",
                  "| ranking | P@1 | P@10 | mAP |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['p@1']:.3f} | {v['p@10']:.3f} | {v['map']:.4f} |" for k, v in run["results"].items()]
        lines.append("")
    cmd = " ".join(f"--catalog {c}" for c in args.catalog)
    lines.append(f"Reproduce: `.venv/bin/python benchmarks/bench_row_norm.py {cmd} --label-column "
                 f"{args.label_column} --query-split {args.query_split} --gallery-split {args.gallery_split}`")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
