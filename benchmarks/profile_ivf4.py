"""Where an ivf4 query's time goes: its stages timed apart, on bench_query's skewed features.

An `ivf4` query (engine/fuzzy_ivf.py) is: the coarse vector (PCA of √ω·clip(z)) and its nearest
lists (the quantizer), P's 4-bit tables, the fast-scan of every row of the probed lists, then the
float32 rerank of the best 100. Each stage is timed alone on the same queries, five rounds each
(medians of per-query times, then the median over rounds), beside the whole `engine.search.search`.

    .venv/bin/python benchmarks/profile_ivf4.py --size 1000000

Writes benchmarks/results/profile_ivf4.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_query import prepared

from simdex.engine.candidates import ClippedL2IVF, faiss_threads
from simdex.engine.fastscan import LEVELS4, FourBitCodec, subquantizers
from simdex.engine.fuzzy_ivf import FuzzyIVF
from simdex.engine.membership import make_membership
from simdex.engine.quantized import UniformCodec
from simdex.engine.scoring import rerank
from simdex.engine.search import search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    z, omega, _ = prepared("skewed", args.size, args.seed)
    with tempfile.TemporaryDirectory(prefix="profile-ivf4-") as tmp:
        np.save(Path(tmp) / "z.npy", z)
        del z
        Z = np.load(Path(tmp) / "z.npy", mmap_mode="r")
        codec = UniformCodec(np.asarray(Z.min(0)), np.asarray(Z.max(0)))
        codes = np.empty(Z.shape, np.uint8)
        for a in range(0, len(Z), 65536):
            codes[a : a + 65536] = codec.encode(Z[a : a + 65536])
        index = FuzzyIVF.build(ClippedL2IVF.build(Z, omega), codes, FourBitCodec.fit(codes, codec))
        del codes
        figures = profile(Z, omega, index, args)
    machine = {"cpus": os.cpu_count(), "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(__file__).parent / "results"
    (out / "profile_ivf4.json").write_text(json.dumps({"args": vars(args), "machine": machine, **figures}, indent=2) + "\n")
    whole = figures["p50_ms"]["whole search"]
    lines = ["# profile_ivf4", "",
             f"{args.size:,} objects of bench_query's skewed features ({figures['features']} kept), ivf4 with its "
             f"default {figures['nprobe']} of {figures['nlist']:,} lists and 100 reranked, {args.queries} queries, "
             f"median of {args.rounds} rounds; {machine['cpus']} CPUs, load average {machine['loadavg']}, "
             f"{machine['date']}.", "",
             "| stage | p50 ms | share of the whole |", "|---|---:|---:|"]
    lines += [f"| {name} | {ms:.3f} | {ms / whole:.0%} |" for name, ms in figures["p50_ms"].items()]
    lines += ["", f"Rows scanned per query: {figures['rows_scanned']:,.0f} (mean).", "",
              f"Reproduce: `.venv/bin/python benchmarks/profile_ivf4.py --size {args.size}`"]
    (out / "profile_ivf4.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def profile(Z, omega, index: FuzzyIVF, args) -> dict:
    rng = np.random.default_rng(args.seed + 1)
    memberships = [make_membership("gaussian", np.asarray(Z[q]), 1.0)
                   for q in np.sort(rng.choice(len(Z), args.queries, replace=False))]
    ivf, codec4, depth = index.coarse.ivf, index.codec, index.default_candidates
    for m in memberships[:10]:  # warm-up, discarded
        search(Z, [m], omega, 10, index=index)

    def coarse(m):
        with faiss_threads(1):
            return ivf.quantizer.search(index._coarse_vectors(m.centres()), index.nprobe)

    def table(m):
        x = np.zeros((subquantizers(codec4.dim), LEVELS4), np.float32)
        x[: codec4.dim] = codec4.table(m, omega)
        return x.reshape(1, -1)

    probed = {id(m): coarse(m) for m in memberships}
    tables = {id(m): table(m) for m in memberships}
    candidates = {id(m): index.search_membership(m, omega, depth) for m in memberships}
    stages = {
        "whole search": lambda m: search(Z, [m], omega, 10, index=index),
        "coarse vector + nearest lists": coarse,
        "P's 4-bit tables": table,
        "fast-scan of the probed lists": lambda m: index._scan_lists(tables[id(m)], depth, probed[id(m)][1],
                                                                     probed[id(m)][0]),
        "float32 rerank of 100": lambda m: rerank(Z, candidates[id(m)][None], [m], omega, 10),
    }
    rounds: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, fn in stages.items():
            times = []
            for m in memberships:
                t = time.perf_counter()
                fn(m)
                times.append(time.perf_counter() - t)
            rounds[name].append(1000 * float(np.median(times)))
    sizes = np.array([ivf.invlists.list_size(int(i)) for i in range(ivf.nlist)])
    scanned = np.mean([sizes[probed[id(m)][1][0]].sum() for m in memberships])
    return {"features": int(Z.shape[1]), "nprobe": index.nprobe, "nlist": int(ivf.nlist),
            "rows_scanned": float(scanned), "p50_ms": {k: float(np.median(v)) for k, v in rounds.items()},
            "rounds_ms": rounds}


if __name__ == "__main__":
    main()
