"""Query benchmark: candidate stage + exact rerank vs the exact fuzzy ranking, at 100k and 1M objects.

How to run (from the repository root; ~15 min per data set on 2 busy cores, ~8 GB of RAM):

    .venv/bin/python benchmarks/bench_query.py                       # 100k and 1M
    .venv/bin/python benchmarks/bench_query.py --sizes 100000 --queries 50   # quick look
    .venv/bin/python benchmarks/bench_query.py --data skewed dense real --catalog CAT --name bench_query
                                                                     # three data sets in one run

Writes benchmarks/results/bench_query.json and bench_query.md (or the --name given).

Data sets (`--data`): `skewed`, below (the default); `dense`, `dense_features`: other
statistics (100 classes, Student-t spread, four fifths of the features signed and dense);
`real`, `real_features`: the features a model made of real images, read from an indexed
catalog (`--catalog`, e.g. the scenes benchmark indexed with the default region), capped
at the catalog's size. Every data set is z-scored with Ω eq. 5 from its class labels.

Data. Synthetic kept features (n = 450 after pruning) sampled to look like a sparse
FCN's per-object channel means: objects belong to 10 classes (as Fashion-MNIST)
split into 500 sub-clusters (styles) in a 32-dimensional latent space; every feature
is a ReLU of a random linear read-out of the latent plus Gaussian noise, with a
per-feature bias that makes 33–85 % of the values exact zeros (61 % overall),
multiplied by log-normal noise (σ = 0.6, heavy right tail: z reaches 9 at the
99.9th percentile) and by a log-normal per-feature scale — so features are sparse,
skewed, correlated (shared latent) and clustered. The features are z-scored and Ω is
eq. 5 from the class labels, as `simdex build` does for a labelled catalog. The heavy
tails matter: they are what makes an L2 index rank many fuzzy top-10 objects far
down (without clipping, the exact L2 top-500 hold only ~85 % of the fuzzy top-10).

Measured, per catalog size:
- build: PCA + IVF training and adding (candidate index), 8-bit codes and their scanner;
- sizes: candidate index and matrices on disk, resident memory added by loading them;
- single-query latency (p50, p99) of `engine.search.search` with the `ivf` index
  (PCA-64 IVF-Flat, nprobe max(32, nlist/32), 1000 candidates, exact float32 rerank), plus a sweep of
  nprobe × candidates; and with `ivf4` (engine/fuzzy_ivf.py, the build's default from 50k
  objects: the same partition, nprobe max(32, 9·nlist/256), each probed row scored by P's 4-bit
  tables, 100 reranked in float32), plus its sweep (nprobe ½, ¾, 1 and 4/3 of the default × 50,
  100, 200 reranked; each query answered by every configuration in turn, in a seeded random
  order, so a drift of the machine's speed falls on all alike; the default is one of them);
- the exhaustive search `--exact` runs: the 4-bit fast-scan (engine/fastscan.py) of every
  row, then float32 rescoring of its best rows, on every query, and its recall against
  the float32 scan;
- recall@10 against the exact float32 top-10 (mean and worst query) over the queries;
- exhaustive scans: the float32 reference scan and the 8-bit table scan with float32
  rescoring (`exact=True`), their latency and the latter's recall.

Queries are catalog objects by id (P(q|q) = 1 is part of the top-10), Gaussian
membership, τ = 1. Warm-up queries are discarded; medians and percentiles are
reported because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from simdex.engine.build_files import BuildFiles
from simdex.engine.candidates import DEFAULT_CANDIDATES, ClippedL2IVF, load_candidate_index
from simdex.engine.fastscan import FastScanner, FourBitCodec, chunk_indexes
from simdex.engine.fuzzy_ivf import FuzzyIVF, default_nprobe4
from simdex.engine.membership import make_membership
from simdex.engine.omega import ClassStats, OmegaInputs, make_omega
from simdex.engine.quantized import LutScanner, UniformCodec
from simdex.engine.scoring import exact_search
from simdex.engine.search import search
from simdex.engine.searcher import load_scanner

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_world(n_features=450, n_classes=10, latent=32, subclusters=500, seed=0, noise=0.5, burst=0.6):
    """The generator's fixed parts (classes, styles, read-out, biases, scales) and its random stream."""
    rng = np.random.default_rng(seed)
    class_centre = rng.normal(0, 1.0, (n_classes, latent)).astype(np.float32)
    sub_class = rng.integers(0, n_classes, subclusters)
    sub_centre = class_centre[sub_class] + rng.normal(0, 0.7, (subclusters, latent)).astype(np.float32)
    readout = (rng.normal(0, 1, (latent, n_features)) / np.sqrt(latent) * 1.5).astype(np.float32)
    bias = rng.normal(-0.6, 0.6, n_features).astype(np.float32)
    scale = rng.lognormal(0, 0.7, n_features).astype(np.float32)
    return {"sub_class": sub_class, "sub_centre": sub_centre, "readout": readout, "bias": bias, "scale": scale,
            "noise": noise, "burst": burst}, rng


def synthetic_sample(world: dict, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """m objects of `world`: raw features (m, n_features) float32 and class labels (m,)."""
    sub_centre, readout = world["sub_centre"], world["readout"]
    sub = rng.integers(0, len(sub_centre), m)
    f = sub_centre[sub] + rng.normal(0, 0.6, (m, sub_centre.shape[1])).astype(np.float32)
    h = f @ readout + world["bias"] + rng.normal(0, world["noise"], (m, readout.shape[1])).astype(np.float32)
    np.maximum(h, 0, out=h)
    h *= np.exp(rng.normal(0, world["burst"], (m, readout.shape[1])).astype(np.float32))
    return h * world["scale"], world["sub_class"][sub]


def synthetic_features(n_objects, n_features=450, n_classes=10, latent=32, subclusters=500, seed=0,
                       noise=0.5, burst=0.6):
    """Raw sparse ReLU features (n_objects, n_features) float32 and class labels (see module docstring)."""
    world, rng = synthetic_world(n_features, n_classes, latent, subclusters, seed, noise, burst)
    x = np.empty((n_objects, n_features), np.float32)
    labels = np.empty(n_objects, np.int64)
    for a in range(0, n_objects, 100_000):
        m = min(100_000, n_objects - a)
        x[a : a + m], labels[a : a + m] = synthetic_sample(world, m, rng)
    return x, labels


def dense_features(n_objects, n_features=384, n_classes=100, latent=48, clusters=5000, seed=0):
    """The second data set (`--data dense`): other statistics than `synthetic_features`. 100 classes
    in 5,000 clusters of a 48-dimensional latent, Student-t (3 degrees of freedom) spread around each
    cluster, read out linearly to 384 features plus Gaussian noise; only a fifth of the features pass
    a ReLU (sparse), the rest stay signed and dense; per-feature log-normal scales. Returns raw
    features (n_objects, n_features) float32 and class labels."""
    rng = np.random.default_rng(seed + 1000)
    class_centre = rng.normal(0, 1.0, (n_classes, latent)).astype(np.float32)
    cluster_class = rng.integers(0, n_classes, clusters)
    centre = class_centre[cluster_class] + rng.normal(0, 0.8, (clusters, latent)).astype(np.float32)
    readout = (rng.normal(0, 1, (latent, n_features)) / np.sqrt(latent)).astype(np.float32)
    relu = rng.random(n_features) < 0.2
    scale = rng.lognormal(0, 0.5, n_features).astype(np.float32)
    x = np.empty((n_objects, n_features), np.float32)
    labels = np.empty(n_objects, np.int64)
    for a in range(0, n_objects, 100_000):
        m = min(100_000, n_objects - a)
        c = rng.integers(0, clusters, m)
        f = centre[c] + 0.5 * rng.standard_t(3, (m, latent)).astype(np.float32)
        h = f @ readout + rng.normal(0, 0.3, (m, n_features)).astype(np.float32)
        h[:, relu] = np.maximum(h[:, relu], 0)
        x[a : a + m] = h * scale
        labels[a : a + m] = cluster_class[c]
    return x, labels


def real_features(n_objects, catalog, seed=0):
    """The third data set (`--data real --catalog DIR`): the raw features of an indexed catalog's first
    `n_objects` objects (commit order) with their `label` column, as a model made them; features no
    object activates are dropped, as the build's pruning drops them. Returns raw features
    (n, active) float32 and class labels (strings; None where unlabelled)."""
    from simdex.engine.catalog import Catalog
    from simdex.engine.shard_reader import column_values, feature_arrays

    cat = Catalog.open(catalog)
    reader = cat.shards()
    parts, labels, have = [], [], 0
    for batch in reader.batches(["object_id", "features", "label"]):
        batch = batch.slice(0, n_objects - have)
        parts.append(feature_arrays(batch, cat.num_features)[1])
        labels.append(column_values(batch, "label"))
        have += batch.num_rows
        if have >= n_objects:
            break
    x = np.concatenate(parts)
    active = (x > 0).any(axis=0)
    return np.ascontiguousarray(x[:, active]), np.concatenate(labels)


DATASETS = {"skewed": synthetic_features, "dense": dense_features, "real": real_features}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall_at(gt: np.ndarray, got: np.ndarray) -> np.ndarray:
    return np.array([len(set(g[g >= 0]) & set(h[h >= 0])) / max(1, (g >= 0).sum()) for g, h in zip(gt, got, strict=True)])


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def prepared(data: str, n_objects: int, seed: int = 0, catalog: Path | None = None):
    """A data set as the query benchmarks see it: features z-scored per column, and Ω eq. 5 from its
    class labels (as `simdex build` estimates it for a labelled catalog). Returns z (n, d) float32,
    Ω (d,) float32 summing to 1, and the share of exact zeros in the raw features."""
    x, labels = real_features(n_objects, catalog) if data == "real" else DATASETS[data](n_objects, seed=seed)
    zero_fraction = float((x == 0).mean())
    z = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    del x
    stats = ClassStats(z.shape[1])
    stats.update(z, labels.astype(object))
    omega = make_omega("clusters").estimate(OmegaInputs(dim=z.shape[1], class_stats=stats)).astype(np.float32)
    return z, omega / omega.sum(), zero_fraction


def run_size(n_objects: int, n_queries: int, workdir: Path, k: int = 10, tau: float = 1.0, seed: int = 0,
             data: str = "skewed", catalog: Path | None = None) -> dict:
    z, omega, zero_fraction = prepared(data, n_objects, seed, catalog)
    n_objects = len(z)
    print(f"== {n_objects:,} objects ({data}, {z.shape[1]} features)", flush=True)
    np.save(workdir / "z.npy", z)
    codec = UniformCodec(z.min(0), z.max(0))
    del z
    Z = np.load(workdir / "z.npy", mmap_mode="r")

    t = time.perf_counter()
    index = ClippedL2IVF.build(Z, omega)
    build_index_s = time.perf_counter() - t
    index.save(BuildFiles(workdir))
    t = time.perf_counter()
    codes = np.empty(Z.shape, np.uint8)
    for a in range(0, len(Z), 65536):
        codes[a : a + 65536] = codec.encode(Z[a : a + 65536])
    np.save(workdir / "codes.npy", codes)
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    codec4 = FourBitCodec.fit(codes, codec)
    BuildFiles(workdir).write_fastscan(codec4, chunk_indexes(codes, codec4))  # as `simdex build` writes them
    encode4_s = time.perf_counter() - t
    t = time.perf_counter()
    FuzzyIVF.build(index, codes, codec4).save(BuildFiles(workdir))  # ivf4: the same partition, 4-bit lists
    build_ivf4_s = time.perf_counter() - t
    index.save(BuildFiles(workdir))  # candidates.json back to the plain ivf for the loads below
    del codes, index
    rss0 = rss_bytes()
    (index, load_index_s) = timed(load_candidate_index, BuildFiles(workdir))
    rss_index = rss_bytes() - rss0
    rss0 = rss_bytes()
    scanner, load_scanner_s = timed(LutScanner, np.load(workdir / "codes.npy", mmap_mode="r"), 2)
    rss_scanner = rss_bytes() - rss0
    rss0 = rss_bytes()
    fast, load_fast_s = timed(load_scanner, BuildFiles(workdir), 2)
    assert isinstance(fast, FastScanner)
    rss_fast = rss_bytes() - rss0
    print(f"index built in {build_index_s:.1f} s, loaded in {load_index_s:.2f} s", flush=True)

    rng = np.random.default_rng(seed + 1)
    qids = np.sort(rng.choice(len(Z), n_queries, replace=False))
    memberships = [make_membership("gaussian", np.asarray(Z[q]), tau) for q in qids]

    # ground truth: the float32 reference scan, all queries per pass over the data
    t = time.perf_counter()
    gt_p, gt = exact_search(Z, memberships, omega, k)
    gt_s = time.perf_counter() - t
    print(f"ground truth: {gt_s:.0f} s for {n_queries} queries", flush=True)
    exact_float_ms = []
    for m in memberships[:3]:
        exact_float_ms.append(1000 * timed(exact_search, Z, [m], omega, k)[1])

    # warm-up (page cache, faiss threads), discarded
    for m in memberships[:10]:
        search(Z, [m], omega, k, index=index)

    default_nprobe = index.nprobe  # what `simdex build` chooses for this size (the sweep changes it)

    def timed_queries(ix, nprobe, n_candidates):
        """Every query through candidate index `ix`: latency percentiles and recall against the truth."""
        lat, hits = [], []
        for m in memberships:
            (P, h), s = timed(search, Z, [m], omega, k, index=ix, n_candidates=n_candidates)
            lat.append(1000 * s)
            hits.append(h[0])
        rec = recall_at(gt, np.array(hits))
        return {"nprobe": nprobe, "candidates": n_candidates, "p50_ms": float(np.median(lat)),
                "p99_ms": float(np.percentile(lat, 99)), "recall_mean": float(rec.mean()), "recall_min": float(rec.min())}

    def run(nprobe, n_candidates):
        return timed_queries(index.with_nprobe(nprobe), nprobe, n_candidates)

    sweep = [run(p, c) for p in (16, 32, 64, 128) for c in (500, 1000, 2000)]
    for row in sweep:
        print(row, flush=True)
    default = run(default_nprobe, DEFAULT_CANDIDATES)

    # ivf4 (the default of `simdex build` from 50k objects): the same lists scored by P's 4-bit tables
    info4 = {**index.info(), "kind": "ivf4", "coarse_nprobe": index.nprobe}
    info4["nprobe"] = default_nprobe4(index.ivf.nlist)
    rss0 = rss_bytes()
    (index4, load_ivf4_s) = timed(FuzzyIVF.load, BuildFiles(workdir), info4, omega)
    rss_ivf4 = rss_bytes() - rss0
    nprobe4 = index4.nprobe
    for m in memberships[:10]:
        search(Z, [m], omega, k, index=index4)

    # every configuration answers each query in turn (seeded random order per query), so the drift of
    # a shared machine's speed over the minutes of the sweep falls on all of them alike
    configs4 = [(p, c) for p in sorted({nprobe4 // 2, nprobe4 * 3 // 4, nprobe4, nprobe4 * 4 // 3})
                for c in sorted({50, 100, 200, index4.default_candidates})]
    indexes4 = {p: index4.with_nprobe(p) for p, _ in configs4}
    lat4s, hits4s = [[] for _ in configs4], [[] for _ in configs4]
    order = np.random.default_rng(seed + 2)
    for m in memberships:
        for c in order.permutation(len(configs4)):
            p, depth = configs4[c]
            (P, h), s = timed(search, Z, [m], omega, k, index=indexes4[p], n_candidates=depth)
            lat4s[c].append(1000 * s)
            hits4s[c].append(h[0])
    sweep4 = []
    for (p, depth), lat, hits in zip(configs4, lat4s, hits4s):
        rec = recall_at(gt, np.array(hits))
        sweep4.append({"nprobe": p, "candidates": depth, "p50_ms": float(np.median(lat)),
                       "p99_ms": float(np.percentile(lat, 99)), "recall_mean": float(rec.mean()),
                       "recall_min": float(rec.min())})
        print("ivf4", sweep4[-1], flush=True)
    default4 = next(r for r in sweep4 if r["nprobe"] == nprobe4 and r["candidates"] == index4.default_candidates)

    lat8, hits8 = [], []
    for m in memberships[: min(40, n_queries)]:
        (P, h), s = timed(search, Z, [m], omega, k, exact=True, scanner=scanner, codec=codec)
        lat8.append(1000 * s)
        hits8.append(h[0])
    rec8 = recall_at(gt[: len(hits8)], np.array(hits8))

    lat4, hits4 = [], []
    for m in memberships:  # every query: the 4-bit pass is the one `--exact` uses
        (P, h), s = timed(search, Z, [m], omega, k, exact=True, scanner=fast)
        lat4.append(1000 * s)
        hits4.append(h[0])
    rec4 = recall_at(gt, np.array(hits4))
    print(f"exact 4-bit: p50 {np.median(lat4):.1f} ms, recall {rec4.mean():.4f} (worst {rec4.min():.2f})", flush=True)

    size = {name: (workdir / name).stat().st_size for name in ("candidates.faiss", "z.npy", "codes.npy")}
    size["codes4"] = sum(p.stat().st_size for p in workdir.glob("codes4-*.faiss"))
    size["candidates4.faiss"] = (workdir / "candidates4.faiss").stat().st_size
    return {
        "data": data, "objects": n_objects, "features": int(Z.shape[1]), "queries": n_queries, "k": k, "tau": tau,
        "zero_fraction": zero_fraction,
        "candidate_index": index.info(),
        "build_candidate_index_s": build_index_s, "encode_8bit_s": encode_s,
        "load_candidate_index_s": load_index_s, "load_8bit_scanner_s": load_scanner_s,
        "disk_bytes": size, "rss_candidate_index_bytes": rss_index, "rss_8bit_scanner_bytes": rss_scanner,
        "query": default, "sweep": sweep, "query_ivf4": default4, "sweep_ivf4": sweep4,
        "build_ivf4_s": build_ivf4_s, "load_ivf4_s": load_ivf4_s, "rss_ivf4_bytes": rss_ivf4,
        "exact_float32_ms_median": float(np.median(exact_float_ms)),
        "ground_truth_s_per_query": gt_s / n_queries,
        "exact_8bit_ms_median": float(np.median(lat8)), "exact_8bit_ms_p99": float(np.percentile(lat8, 99)),
        "exact_8bit_recall_mean": float(rec8.mean()), "exact_8bit_recall_min": float(rec8.min()),
        "exact_8bit_queries": len(hits8),
        "encode_4bit_s": encode4_s, "load_4bit_scanner_s": load_fast_s, "rss_4bit_scanner_bytes": rss_fast,
        "exact_4bit_ms_median": float(np.median(lat4)), "exact_4bit_ms_p99": float(np.percentile(lat4, 99)),
        "exact_4bit_recall_mean": float(rec4.mean()), "exact_4bit_recall_min": float(rec4.min()),
        "exact_4bit_queries": len(hits4),
    }


def markdown(results: list[dict], machine: dict, name: str = "bench_query") -> str:
    lines = [
        f"# {name}", "",
        f"Machine: {machine['cpus']} CPUs, {machine['processor']}, load average at start {machine['loadavg']}; "
        f"{machine['date']}. Command: `{machine['command']}`.", "",
        "| data | objects | nprobe | p50 ms | p99 ms | recall@10 mean | recall@10 worst | exact 4-bit ms p50 / p99 | "
        "exact 4-bit recall mean / worst | exact 8-bit ms | exact 8-bit recall | "
        "exact float32 ms | index build s | index disk MB | index RSS MB | 8-bit codes MB | 4-bit codes MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    head = ["Targets (issue 17), per data set: the default ivf4 query and the fastest ivf4 sweep point at recall@10 ≥ "
            "0.99 with the worst query ≥ 0.8; the exact scan (`--exact`).", "",
            "| data | objects | features | default ivf4 p50 ms / recall / worst | fastest at recall ≥ 0.99: nprobe, "
            "reranked, p50 ms | exact 4-bit p50 ms / recall |", "|---|---|---|---|---|---|"]
    for r in results:
        q = r["query_ivf4"]
        ok = [s for s in r["sweep_ivf4"] + [q] if s["recall_mean"] >= 0.99 and s["recall_min"] >= 0.8]
        best = min(ok, key=lambda s: s["p50_ms"]) if ok else None
        best_s = f"{best['nprobe']}, {best['candidates']}, {best['p50_ms']:.1f}" if best else "none in the sweep"
        head.append(f"| {r.get('data', 'skewed')} | {r['objects']:,} | {r['features']} | {q['p50_ms']:.1f} / "
                    f"{q['recall_mean']:.3f} / {q['recall_min']:.1f} | {best_s} | {r['exact_4bit_ms_median']:.0f} / "
                    f"{r['exact_4bit_recall_mean']:.3f} |")
    lines[4:4] = head + ["", "ivf (PCA-64 IVF-Flat candidates, float32 rerank) and the exhaustive scans:", ""]
    for r in results:
        q = r["query"]
        lines.append(
            f"| {r.get('data', 'skewed')} | {r['objects']:,} | {q['nprobe']} | {q['p50_ms']:.1f} | {q['p99_ms']:.1f} | {q['recall_mean']:.3f} | {q['recall_min']:.1f} | "
            f"{r['exact_4bit_ms_median']:.0f} / {r['exact_4bit_ms_p99']:.0f} | "
            f"{r['exact_4bit_recall_mean']:.3f} / {r['exact_4bit_recall_min']:.1f} | "
            f"{r['exact_8bit_ms_median']:.0f} | {r['exact_8bit_recall_mean']:.3f} | {r['exact_float32_ms_median']:.0f} | "
            f"{r['build_candidate_index_s']:.0f} | {r['disk_bytes']['candidates.faiss'] / 1e6:.0f} | "
            f"{r['rss_candidate_index_bytes'] / 1e6:.0f} | {r['disk_bytes']['codes.npy'] / 1e6:.0f} | "
            f"{r['disk_bytes']['codes4'] / 1e6:.0f} |")
    lines += ["", "ivf4 (the default from 50,000 objects: the same lists holding 4-bit codes scored by P's tables):", "",
              "| data | objects | nprobe | reranked | p50 ms | p99 ms | recall@10 mean | recall@10 worst | lists on disk MB | "
              "lists RSS MB | lists build s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        q = r["query_ivf4"]
        lines.append(f"| {r.get('data', 'skewed')} | {r['objects']:,} | {q['nprobe']} | {q['candidates']} | {q['p50_ms']:.1f} | {q['p99_ms']:.1f} | "
                     f"{q['recall_mean']:.3f} | {q['recall_min']:.1f} | {r['disk_bytes']['candidates4.faiss'] / 1e6:.0f} | "
                     f"{r['rss_ivf4_bytes'] / 1e6:.0f} | {r['build_ivf4_s']:.0f} |")
    lines += ["", "ivf4 sweep (nprobe × reranked rows):", "",
              "| data | objects | nprobe | reranked | p50 ms | p99 ms | recall mean | recall worst |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["sweep_ivf4"]:
            lines.append(f"| {r.get('data', 'skewed')} | {r['objects']:,} | {s['nprobe']} | {s['candidates']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                         f"{s['recall_mean']:.3f} | {s['recall_min']:.1f} |")
    lines += ["", "ivf sweep (nprobe × candidates):", "", "| data | objects | nprobe | candidates | p50 ms | p99 ms | recall mean | recall worst |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["sweep"]:
            lines.append(f"| {r.get('data', 'skewed')} | {r['objects']:,} | {s['nprobe']} | {s['candidates']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                         f"{s['recall_mean']:.3f} | {s['recall_min']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="catalog sizes; `real` is capped at the catalog's objects")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", choices=sorted(DATASETS), nargs="+", default=["skewed"],
                        help="data sets, measured one after the other in this run: skewed (the module docstring's "
                             "features), dense (`dense_features`, other statistics), real (`real_features`: "
                             "needs --catalog)")
    parser.add_argument("--catalog", type=Path, default=None, help="the indexed catalog `--data real` reads")
    parser.add_argument("--name", default=None,
                        help="result files' name (default: bench_query, or bench_query_DATA for one other data set)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if "real" in args.data and args.catalog is None:
        parser.error("--data real needs --catalog DIR (an indexed catalog, e.g. of the scenes benchmark)")
    name = args.name or ("bench_query" if args.data == ["skewed"] else f"bench_query_{'_'.join(args.data)}")
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": "python benchmarks/bench_query.py " + " ".join(
                   [f"--sizes {' '.join(map(str, args.sizes))}", f"--queries {args.queries}"]
                   + ([f"--data {' '.join(args.data)}"] if args.data != ["skewed"] else [])
                   + ([f"--catalog {args.catalog}"] if "real" in args.data else []))}
    results = []
    for data in args.data:
        sizes = args.sizes
        if data == "real":
            from simdex.engine.catalog import Catalog

            count = Catalog.open(args.catalog).num_objects
            sizes = sorted({min(n, count) for n in args.sizes})
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                results.append(run_size(n, args.queries, Path(tmp), data=data, catalog=args.catalog))
    results_doc = {"machine": machine, "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results_doc, indent=2))
    (args.out / f"{name}.md").write_text(markdown(results, machine, name))
    print(markdown(results, machine, name))


if __name__ == "__main__":
    main()
