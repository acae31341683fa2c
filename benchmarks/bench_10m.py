"""10M objects on one machine: write a synthetic catalog, `simdex build` it, query it cold and warm.

How to run (from the repository root; the catalog needs ~45 GB of disk, the whole run
about an hour on 2 cores; every phase resumes where it stopped):

    .venv/bin/python benchmarks/bench_10m.py --workdir /data/bench10m            # 10M objects
    .venv/bin/python benchmarks/bench_10m.py --workdir /tmp/b1m --objects 1000000 # a quick look

Writes benchmarks/results/bench_10m.json and bench_10m.md (name them with --name).

Phases, each a separate process so that its memory and its cold start are its own:

1. generate: raw vectors of N = 512 features per object written as catalog shards of
   200,000 rows through the Catalog API and the indexer's ShardWriter (exactly as
   `simdex index` commits them: journal, temporary name, rename): 450 features from
   benchmarks/bench_query.py's generator (sparse, skewed, correlated; 10 classes in 500
   styles), 62 never active, in 8 layers of 64 channels; `label` and `split` columns.
   Shard s draws from its own seeded stream (seed, s), so an interrupted run resumes at
   the first missing shard and gives the same catalog.
2. build: the real CLI, `simdex build --catalog DIR`, with its defaults; its wall time,
   stages and peak resident memory (the child's maxrss).
3. query: a fresh process after the page cache is dropped (root only; otherwise stated):
   opening the build and loading what a query needs (timed, with the resident memory it
   adds: anonymous and file-backed), the first queries cold, then 200 warm queries by
   object id through `Searcher.search` (what `simdex query` and the service call), and the
   candidate stage's sweep of lists probed. Recall@10 is measured against the exhaustive
   scan `--exact` runs (4-bit fast-scan + float32 rescoring) for every query, and that
   scan itself against the float32 scan of every row for the first --truth-queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import recall_at, synthetic_sample, synthetic_world  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N_RAW, LAYER, N_REAL = 512, 64, 450
SHARD_ROWS = 200_000
SIMDEX = str(Path(sys.executable).with_name("simdex"))


def proc_status() -> dict:
    """Resident memory of this process by kind (bytes): anonymous, file-backed, total, peak."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def generate(root: Path, n_objects: int, seed: int = 0) -> dict:
    """Phase 1 (module docstring); returns what it did."""
    from simdex.engine.catalog import Catalog
    from simdex.indexer.shards import ShardWriter, object_schema

    phi = [{"name": f"L{i}", "channels": LAYER, "stride": 1, "offset": i * LAYER} for i in range(N_RAW // LAYER)]
    info = {"sha256": "e" * 64, "config": {"synthetic": "bench_10m"}, "phi": phi, "num_features": N_RAW,
            "region": "bbox"}
    cat = Catalog.open(root) if (root / "catalog.json").exists() else Catalog.create(root, info)
    have = cat.num_objects
    if have % SHARD_ROWS and have != n_objects:
        raise SystemExit(f"{root}: {have} objects is not a whole number of shards; start in a new --workdir")
    world, _ = synthetic_world(n_features=N_REAL, seed=seed)
    real = np.random.default_rng(seed).permutation(N_RAW)[:N_REAL]  # spread real and inactive over the layers
    names = np.array([f"class{c}" for c in range(10)], dtype=object)
    schema = object_schema(N_RAW, [("split", "split", pa.string())])
    started = time.perf_counter()
    with cat.lock():
        if have == 0:
            cat.begin_job("synthetic", {"source": "synthetic", "num_images": n_objects})
        for a in range(have, n_objects, SHARD_ROWS):
            n = min(SHARD_ROWS, n_objects - a)
            xr, labels = synthetic_sample(world, n, np.random.default_rng([seed, a // SHARD_ROWS]))
            x = np.zeros((n, N_RAW), np.float32)
            x[:, real] = xr
            del xr
            nxt = cat.counters()
            w = ShardWriter(cat, schema, row_group_rows=8192)
            ids = np.arange(nxt["object_id"], nxt["object_id"] + n)
            w.add_objects({"object_id": ids, "image_id": ids, "source": [f"synthetic#{i}" for i in ids],
                           "ordinal": ids, "component": np.zeros(n, np.int32), "label": names[labels],
                           "split": np.where(ids % 7 == 0, "test", "train"), "x0": np.zeros(n, np.int32),
                           "y0": np.zeros(n, np.int32), "x1": np.full(n, 31, np.int32),
                           "y1": np.full(n, 31, np.int32), "area": np.full(n, 400)}, x)
            shard_tmp, errors_tmp = w.close()
            cat.commit("synthetic", shard_tmp=shard_tmp, errors_tmp=errors_tmp, ordinal_start=a, next_ordinal=a + n,
                       first_object_id=nxt["object_id"], rows=n, first_image_id=nxt["image_id"], images=n,
                       error_rows=0)
            done = a + n
            rate = (done - have) / (time.perf_counter() - started)
            print(f"generate: {done:,} / {n_objects:,} objects ({rate:,.0f}/s)", flush=True)
    shards_bytes = sum(p.stat().st_size for p in cat.shard_paths())
    return {"objects": n_objects, "written_now": n_objects - have, "seconds": time.perf_counter() - started,
            "shards_bytes": shards_bytes}


def run_build(root: Path) -> dict:
    """Phase 2: the CLI's build, its wall time and its peak resident memory: anonymous (what it holds)
    and file-backed (pages of the matrices it writes through memory maps: page cache the kernel
    writes back and reclaims), sampled every 0.5 s."""
    import threading

    t = time.perf_counter()
    child = subprocess.Popen([SIMDEX, "build", "--catalog", str(root)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}

    def sample():
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in peak:
                        peak[key] = max(peak[key], int(value.split()[0]) * 1024)
            except OSError:
                break
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - t
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"simdex build failed:\n{stderr[-4000:]}")
    print(stdout, flush=True)
    return {"wall_s": wall, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "peak_anon_bytes": peak["RssAnon"], "peak_file_bytes": peak["RssFile"], "stdout": stdout}


# (lists probed, rows reranked) of the first-touch sweep
FIRST_TOUCH_SETTINGS = ((64, 50), (64, 100), (128, 50), (128, 100), (192, 50), (256, 50), (256, 100))


def _timed_search(searcher, oid, **options) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    table = searcher.search(ids=[int(oid)], k=10, columns=[], **options)
    return 1000 * (time.perf_counter() - t), table.column("object_id").to_numpy()


def query_phase(root: Path, n_queries: int, truth_queries: int, seed: int = 1, nprobe: int | None = None) -> dict:
    """Phase 3 (module docstring), in this fresh process. `nprobe`: lists probed by the cold and warm
    queries (default: what the build recorded; a build made before the MAX_NPROBE4 cap recorded more)."""
    from simdex.engine.membership import make_membership
    from simdex.engine.scoring import exact_search
    from simdex.engine.searcher import Searcher

    dropped = drop_page_cache()
    mem0 = proc_status()
    t = time.perf_counter()
    s = Searcher.open(root)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    index = s.index
    load_index_s = time.perf_counter() - t
    mem_index = proc_status()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(s.object_ids), n_queries, replace=False))
    oids = s.object_ids[rows]
    order = rng.permutation(n_queries)  # queries in random order: no locality between consecutive ones

    probe = {} if nprobe is None else {"nprobe": nprobe}
    cold = [_timed_search(s, oids[i], **probe)[0] for i in order[:20]]  # pages of Z not yet read
    for i in order[20:40]:  # warm-up of what repeats (code paths, the lists' pages)
        _timed_search(s, oids[i], **probe)
    warm, hits = [], {}
    for i in order:
        ms, h = _timed_search(s, oids[i], **probe)
        warm.append(ms)
        hits[i] = h
    mem_warm = proc_status()
    print(f"warm: p50 {np.median(warm):.1f} ms, p99 {np.percentile(warm, 99):.1f} ms", flush=True)

    # ground truth: the exhaustive scan of `--exact` for every query
    exact_ms, truth = [], []
    for i in range(n_queries):
        ms, h = _timed_search(s, oids[i], exact=True)
        exact_ms.append(ms)
        truth.append(h)
    truth = np.array(truth)
    print(f"exact: p50 {np.median(exact_ms):.0f} ms", flush=True)
    got = np.array([hits[i] for i in range(n_queries)])
    rec = recall_at(truth, got)
    # and that scan against float32 over every row, all truth queries in one pass
    t = time.perf_counter()
    ms_ = [make_membership("gaussian", np.asarray(s.Z[r], np.float32), s.tau) for r in rows[:truth_queries]]
    _, f32 = exact_search(s.Z, ms_, s.omega, 10)
    f32_s = time.perf_counter() - t
    rec_exact = recall_at(s.object_ids[f32], truth[:truth_queries])
    print(f"float32 truth: {truth_queries} queries in {f32_s:.0f} s, exact scan recall {rec_exact.mean():.3f}",
          flush=True)

    sweep = []
    for lists in sorted({64, 128, 192, 256, 384, 512, index.nprobe}):
        for depth in (100, 200):
            lat, got = [], []
            for i in range(n_queries):
                ms, h = _timed_search(s, oids[i], nprobe=lists, n_candidates=depth)
                lat.append(ms)
                got.append(h)
            r = recall_at(truth, np.array(got))
            sweep.append({"nprobe": lists, "depth": depth, "p50_ms": float(np.median(lat)),
                          "p99_ms": float(np.percentile(lat, 99)), "recall_mean": float(r.mean()),
                          "recall_min": float(r.min())})
            print("sweep", sweep[-1], flush=True)
    # first touch: the page cache dropped before each setting, so every reranked row is read from disk
    # (the lists stay in this process's memory), as for queries of a catalog larger than the cache
    first_touch = []
    for lists, depth in FIRST_TOUCH_SETTINGS:
        if not drop_page_cache():
            break
        lat, got = [], []
        for i in order:
            ms, h = _timed_search(s, oids[i], nprobe=lists, n_candidates=depth)
            lat.append(ms)
            got.append(h)
        r = recall_at(truth, np.array([got[j] for j in np.argsort(order)]))
        first_touch.append({"nprobe": lists, "depth": depth, "p50_ms": float(np.median(lat)),
                            "p99_ms": float(np.percentile(lat, 99)), "recall_mean": float(r.mean()),
                            "recall_min": float(r.min())})
        print("first touch", first_touch[-1], flush=True)
    return {
        "first_touch": first_touch,
        "page_cache_dropped": dropped, "open_s": open_s, "load_index_s": load_index_s,
        "memory": {"start": mem0, "after_index": mem_index, "after_queries": mem_warm},
        "candidates": index.info(), "queries": n_queries, "nprobe": nprobe or index.nprobe,
        "cold_ms": {"first": cold[0], "p50": float(np.median(cold)), "max": float(np.max(cold)), "runs": cold},
        "warm_ms": {"p50": float(np.median(warm)), "p99": float(np.percentile(warm, 99))},
        "recall_mean": float(rec.mean()), "recall_min": float(rec.min()),
        "exact_ms": {"p50": float(np.median(exact_ms)), "p99": float(np.percentile(exact_ms, 99))},
        "exact_vs_float32": {"queries": truth_queries, "recall_mean": float(rec_exact.mean()),
                             "recall_min": float(rec_exact.min()), "float32_pass_s": f32_s},
        "sweep": sweep,
    }


def markdown(doc: dict) -> str:
    q, b, g = doc["query"], doc["build"], doc["generate"]
    info = doc["build_info"]
    gb = 1 << 30
    mem = q["memory"]
    lines = [
        f"# {doc['name']}", "",
        f"Machine: {doc['machine']['cpus']} CPUs, {doc['machine']['ram_gb']:.0f} GB RAM, load average at the end "
        f"{' '.join(f'{v:.1f}' for v in doc['machine']['loadavg'])}; {doc['machine']['date']}. "
        f"Command: `{doc['command']}`.", "",
        "| objects | raw → active → kept | shards GB | build s | build peak RSS GB (anon / all) | build disk GB | "
        "cold open + first query s | cold query p50 ms | warm p50 ms | warm p99 ms | recall@10 mean / worst | "
        "exact p50 ms | resident after open GB (anon + file) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {info['objects']:,} | {N_RAW} → {info['active']} → {info['kept']} | {g['shards_bytes'] / gb:.1f} | "
        f"{b['wall_s']:.0f} | {b['peak_anon_bytes'] / gb:.1f} / {b['peak_rss_bytes'] / gb:.1f} | {doc['build_disk_bytes'] / gb:.1f} | "
        f"{q['open_s'] + q['load_index_s'] + q['cold_ms']['first'] / 1000:.1f} | {q['cold_ms']['p50']:.1f} | "
        f"{q['warm_ms']['p50']:.1f} | {q['warm_ms']['p99']:.1f} | {q['recall_mean']:.3f} / {q['recall_min']:.1f} | "
        f"{q['exact_ms']['p50']:.0f} | {mem['after_index']['RssAnon'] / gb:.2f} + "
        f"{mem['after_index']['RssFile'] / gb:.2f} |", "",
        f"Candidate stage: `{json.dumps(q['candidates'])}`; the queries above probed {q['nprobe']} lists.", "",
        f"Page cache dropped before the query process: {q['page_cache_dropped']}. After the {q['queries']} warm "
        f"queries and the sweep the process held {mem['after_queries']['RssAnon'] / gb:.2f} GB anonymous + "
        f"{mem['after_queries']['RssFile'] / gb:.2f} GB of mapped files (the build's float32 matrix is "
        f"{doc['z_bytes'] / gb:.1f} GB; a query reads only its reranked rows from it).", "",
        f"The exhaustive scan (`--exact`: 4-bit fast-scan, float32 rescoring), the truth above, against the float32 "
        f"scan of every row on {q['exact_vs_float32']['queries']} queries: recall@10 "
        f"{q['exact_vs_float32']['recall_mean']:.3f} (worst {q['exact_vs_float32']['recall_min']:.1f}).", "",
        "Build stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in info["timings_s"].items()), "",
        "Sweep of lists probed × rows reranked (`simdex query --nprobe N --candidates M`), warm:", "",
        "| nprobe | reranked | p50 ms | p99 ms | recall mean | recall worst |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['nprobe']} | {r['depth']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['recall_mean']:.3f} | "
              f"{r['recall_min']:.1f} |" for r in q["sweep"]]
    if q.get("first_touch"):
        lines += ["", f"First touch: the page cache dropped before each setting, then the {q['queries']} queries "
                  "(every reranked row read from disk; the lists are in the process's memory):", "",
                  "| nprobe | reranked | p50 ms | p99 ms | recall mean | recall worst |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['nprobe']} | {r['depth']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['recall_mean']:.3f} | "
                  f"{r['recall_min']:.1f} |" for r in q["first_touch"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the catalog is kept (and resumed)")
    parser.add_argument("--objects", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--truth-queries", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true", help="build again even if the catalog has a build")
    parser.add_argument("--name", default="bench_10m")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--nprobe", type=int, default=None,
                        help="lists the cold and warm queries probe (default: the build's)")
    parser.add_argument("--phase", choices=("query",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.workdir / "catalog"
    if args.phase == "query":
        print(json.dumps(query_phase(root, args.queries, args.truth_queries, nprobe=args.nprobe)))
        return
    state = args.workdir / "state.json"
    doc = json.loads(state.read_text()) if state.exists() else {}
    if doc.get("generate", {}).get("objects") != args.objects:
        doc["generate"] = generate(root, args.objects)
        doc.pop("build", None)
        state.write_text(json.dumps(doc))
    if args.rebuild or "build" not in doc:
        doc["build"] = run_build(root)
        state.write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--phase", "query",
                          "--queries", str(args.queries), "--truth-queries", str(args.truth_queries),
                          *(["--nprobe", str(args.nprobe)] if args.nprobe else [])],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"query phase failed:\n{out.stderr[-4000:]}")
    doc["query"] = json.loads(out.stdout.strip().splitlines()[-1])
    print(out.stderr[-2000:], flush=True)

    from simdex.engine.catalog import Catalog

    build_dir = Catalog.open(root).current_build_dir()
    doc["build_info"] = json.loads((build_dir / "build.json").read_text())
    doc["build_disk_bytes"] = sum(p.stat().st_size for p in build_dir.iterdir() if p.is_file())
    doc["z_bytes"] = sum(p.stat().st_size for p in build_dir.glob("z*.npy"))
    doc["name"] = args.name
    doc["command"] = (f"python benchmarks/bench_10m.py --workdir DIR --objects {args.objects} --queries {args.queries}"
                      + (f" --nprobe {args.nprobe}" if args.nprobe else ""))
    doc["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                      "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
                      "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2))
    md = markdown(doc)
    (args.out / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
