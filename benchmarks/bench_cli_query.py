"""Whole-process benchmark: `simdex build` on a synthetic 1M-object catalog, then `simdex query ID`.

How to run (from the repository root; ~6 min and ~6 GB of disk on 2 cores):

    .venv/bin/python benchmarks/bench_cli_query.py                    # 1M objects
    .venv/bin/python benchmarks/bench_cli_query.py --objects 100000   # quicker

Writes benchmarks/results/bench_cli_query.json and .md. The catalog is kept in
--workdir (default: a temporary folder, removed at the end) unless --keep.

Data: raw vectors of N = 832 features per object, written as catalog shards through
the Catalog API and the indexer's ShardWriter (as `simdex index` writes them): 680
features from benchmarks/bench_query.py's generator (sparse, skewed, correlated,
10 classes), 100 never-active features (zero for every object: dropped as inactive)
and 52 faint ones (100× smaller: they carry almost none of v_1 and are pruned), in
13 layers of 64 channels. SVD pruning at retain 0.99 then keeps ≈ 450 features. Objects carry `label` (class name) and `split` (train/test).

Measured: build time by stage, the build's own recall@10 record, and the wall time
of whole `simdex query --catalog DIR ID` processes (interpreter start, imports,
opening the build, the query, printing), median over --repeats runs with different
ids, after one discarded run; also with --exact and with --where.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import synthetic_features  # noqa: E402

from simdex.engine.build import BuildConfig, build, format_build_summary  # noqa: E402
from simdex.engine.catalog import Catalog  # noqa: E402
from simdex.indexer.shards import ShardWriter, object_schema  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N_RAW, LAYER, N_REAL, N_INACTIVE = 832, 64, 680, 100
SIMDEX = str(Path(sys.executable).with_name("simdex"))


def write_catalog(root: Path, n_objects: int, shard_rows: int = 100_000, seed: int = 0,
                  info: dict | None = None) -> Catalog:
    """The synthetic catalog of the module docstring. `info`: the catalog's record of its model (default: a
    synthetic one, 13 layers of 64 channels); with a real model's (bench_serve.py), its φ and its N raw
    features (N_REAL real, N_INACTIVE never active, the rest faint), so queries by image run that model."""
    if info is None:
        phi = [{"name": f"L{i}", "channels": LAYER, "stride": 1, "offset": i * LAYER} for i in range(N_RAW // LAYER)]
        info = {"sha256": "f" * 64, "config": {"synthetic": True}, "phi": phi, "num_features": N_RAW, "region": "bbox"}
    n_raw = info["num_features"]
    cat = Catalog.create(root, info)
    rng = np.random.default_rng(seed)
    columns = rng.permutation(n_raw)  # spread real, inactive and faint features over the layers
    real, faint = columns[:N_REAL], columns[N_REAL + N_INACTIVE :]
    xr, labels = synthetic_features(n_objects, n_features=N_REAL, seed=seed)
    names = np.array([f"class{c}" for c in range(10)], dtype=object)
    schema = object_schema(n_raw, [("split", "split", pa.string())])
    with cat.lock():
        cat.begin_job("synthetic", {"source": "synthetic", "num_images": n_objects})
        for a in range(0, n_objects, shard_rows):
            n = min(shard_rows, n_objects - a)
            x = np.zeros((n, n_raw), np.float32)
            x[:, real] = xr[a : a + n]
            x[:, faint] = 0.01 * xr[a : a + n, : len(faint)]
            nxt = cat.counters()
            w = ShardWriter(cat, schema, row_group_rows=8192)
            ids = np.arange(nxt["object_id"], nxt["object_id"] + n)
            w.add_objects({"object_id": ids, "image_id": ids, "source": [f"synthetic#{i}" for i in ids],
                           "ordinal": ids, "component": np.zeros(n, np.int32), "label": names[labels[a : a + n]],
                           "split": np.where(ids % 7 == 0, "test", "train"), "x0": np.zeros(n, np.int32),
                           "y0": np.zeros(n, np.int32), "x1": np.full(n, 31, np.int32), "y1": np.full(n, 31, np.int32),
                           "area": np.full(n, 400)}, x)
            shard_tmp, errors_tmp = w.close()
            cat.commit("synthetic", shard_tmp=shard_tmp, errors_tmp=errors_tmp, ordinal_start=a, next_ordinal=a + n,
                       first_object_id=nxt["object_id"], rows=n, first_image_id=nxt["image_id"], images=n, error_rows=0)
    return cat


def time_query(args: list[str]) -> tuple[float, float, str]:
    """Wall time and CPU time (user + sys) of one whole `simdex query` process, and its output.

    The CPU time is reported beside the wall time because on a shared 2-core machine a
    short process can wait for a core several times longer than it runs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([SIMDEX, "query", *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="simdex-bench-"))
    root = workdir / "catalog"
    try:
        t = time.perf_counter()
        cat = Catalog.open(root) if (root / "catalog.json").exists() else write_catalog(root, args.objects)
        write_s = time.perf_counter() - t
        print(f"catalog: {cat.num_objects:,} objects in {write_s:.0f} s", flush=True)
        t = time.perf_counter()
        result = build(cat, BuildConfig())
        build_s = time.perf_counter() - t
        print(format_build_summary(result.info, result.version), flush=True)

        rng = np.random.default_rng(1)
        ids = rng.choice(cat.num_objects, args.repeats + 1, replace=False)
        catalog_arg = ["--catalog", str(root)]
        walls, cpus = [], []
        for i, qid in enumerate(ids):
            s, cpu, text = time_query([*catalog_arg, str(qid)])
            if i:  # the first run warms the page cache and is discarded
                walls.append(s)
                cpus.append(cpu)
        exact = [time_query([*catalog_arg, str(q), "--exact"])[:2] for q in ids[:3]]
        where = [time_query([*catalog_arg, str(q), "--where", "label = 'class3' AND split = 'test'"])[:2]
                 for q in ids[:3]]
        exact_walls, where_walls = [w for w, _ in exact], [w for w, _ in where]
        disk = {p.name: p.stat().st_size for p in result.path.iterdir() if p.is_file()}
        doc = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
            "command": f"python benchmarks/bench_cli_query.py --objects {args.objects} --repeats {args.repeats}",
            "objects": cat.num_objects, "raw_features": N_RAW, "write_catalog_s": write_s, "build_s": build_s,
            "build": {k: result.info[k] for k in ("active", "kept", "retained", "omega", "candidates", "recall",
                                                  "timings_s")},
            "table_iii_total": result.info["table_iii"][-1],
            "query_wall_s": {"median": float(np.median(walls)), "max": float(np.max(walls)), "runs": walls},
            "query_cpu_s": {"median": float(np.median(cpus)), "max": float(np.max(cpus)), "runs": cpus},
            "query_exact_s": {"wall_median": float(np.median(exact_walls)),
                              "cpu_median": float(np.median([c for _, c in exact])), "runs": exact},
            "query_where_s": {"wall_median": float(np.median(where_walls)),
                              "cpu_median": float(np.median([c for _, c in where])), "runs": where},
            "build_disk_bytes": disk, "sample_output": text,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_cli_query.json").write_text(json.dumps(doc, indent=2))
        r = result.info["recall"]
        md = "\n".join([
            "# bench_cli_query", "",
            f"Machine: {doc['machine']['cpus']} CPUs, load average {' '.join(f'{v:.1f}' for v in doc['machine']['loadavg'])}; "
            f"{doc['machine']['date']}. Command: `{doc['command']}`.", "",
            "| objects | raw → active → kept | build s | build recall@10 (mean / worst, queries) | "
            "`simdex query ID` wall s (median / max) | its CPU s (median) | `--exact` wall / CPU s | "
            "`--where` wall / CPU s |",
            "|---|---|---|---|---|---|---|---|",
            f"| {cat.num_objects:,} | {N_RAW} → {result.info['active']} → {result.info['kept']} | {build_s:.0f} | "
            f"{r['recall_at_10_mean']:.3f} / {r['recall_at_10_min']:.1f} ({r['queries']}) | "
            f"{np.median(walls):.2f} / {np.max(walls):.2f} | {np.median(cpus):.2f} | "
            f"{doc['query_exact_s']['wall_median']:.2f} / {doc['query_exact_s']['cpu_median']:.2f} | "
            f"{doc['query_where_s']['wall_median']:.2f} / {doc['query_where_s']['cpu_median']:.2f} |",
            "", "Build stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.info["timings_s"].items()),
            "", "Sample output:", "", "```", text.rstrip(), "```", ""])
        (args.out / "bench_cli_query.md").write_text(md)
        print(md)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
