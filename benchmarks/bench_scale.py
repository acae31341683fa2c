"""The Ray engine against the single-process one on this machine: `simdex index` images/s and
`simdex build` seconds (issue 15, DESIGN §10).

Four settings, each in a fresh subprocess, on the same images (the first N of `--source`,
default 8,000 Fashion-MNIST images with the shipped model):

    local-1t   the single-process indexer with torch limited to 1 thread (what one Ray model actor gets)
    local      the single-process indexer as shipped (torch's default threads: one per core)
    ray-w1     `--engine ray --workers 1`: one model actor (1 CPU, 1 torch thread) + the committing driver
    ray-w2     `--engine ray --workers 2`: two model actors

Each subprocess starts its local Ray cluster first when it needs one (timed apart:
`ray_start_s`), indexes a warm-up job of one batch (discarded), then the timed job into a new
catalog with a shard every `--shard-images` images (several shards, so the build has tasks to
spread). Reported per run: images/s end to end (actor start-up, model shipping and the last
commit included) and steady images/s (from the first batch's progress call to the last: the
rate once the model actors are up; on Ray it over-states the rate, since chunks the actors
finished before the driver's first commit count as free). The overhead of Ray at one worker is ray-w1 against
local-1t, same compute per image.

Then the same subprocess builds its catalog (`simdex build --omega clusters`: eq. 5 from the
labels, so the seconds are the passes' and not learned Ω's fit; a fresh copy each time, so no
statistics are reused): local for local*, `--engine ray --workers K` for ray-wK; reported are
the statistics and normalisation passes' seconds and the whole build's. The parent checks that
every catalog equals the local one (same ids, features to 1e-5) and every build the local build
(same kept features, z to 1e-6, same Ω).

Settings run round-robin `--repeats` times (default 2) so load changes hit all of them; the
median is reported. The machine is recorded: on 2 cores, 2 workers share the cores with the
driver, so these figures measure overhead, not scaling.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_scale.py                        # 8,000 images, 2 repeats
    .venv/bin/python benchmarks/bench_scale.py --images 2000 --repeats 1   # a quick dry run

Writes benchmarks/results/bench_scale.json and bench_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SETTINGS = {  # name: (engine, workers, torch threads of the local engine)
    "local-1t": ("local", None, 1),
    "local": ("local", None, 0),
    "ray-w1": ("ray", 1, 0),
    "ray-w2": ("ray", 2, 0),
}


def child(args: argparse.Namespace) -> dict:
    """One setting in this process: (Ray start), warm-up, timed index job, timed builds."""
    import torch

    from simdex.engine.build import BuildConfig, build
    from simdex.engine.catalog import Catalog
    from simdex.indexer.checkpoint import load_model
    from simdex.indexer.runner import IndexOptions, index_source
    from simdex.indexer.sources import open_source

    engine, workers, threads = SETTINGS[args.setting]
    if threads:
        torch.set_num_threads(threads)
    ray_start_s = None
    if engine == "ray":
        import logging

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        ray_start_s = time.perf_counter() - t0
    loaded = load_model(args.model)
    src = open_source(args.source)
    out = Path(args.catalog)
    model_threads = torch.get_num_threads()
    if engine == "ray":  # the model runs in the actors, with the threads the engine gives each
        from simdex.indexer.ray_runner import cluster_workers

        model_threads = max(1, int(cluster_workers(ray, workers)[1]))

    def options(limit: int) -> IndexOptions:
        return IndexOptions(batch_size=args.batch_size, shard_images=args.shard_images, limit=limit,
                            engine=engine, workers=workers)

    index_source(src, out.parent / f"{out.name}-warmup", loaded, options(args.batch_size))  # discarded
    shutil.rmtree(out.parent / f"{out.name}-warmup")
    calls: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    result = index_source(src, out, loaded, options(args.images),
                          progress=lambda p: calls.append((time.perf_counter(), p.images_done)))
    index_s = time.perf_counter() - t0
    (t_first, n_first), (t_last, n_last) = calls[0], calls[-1]
    steady = (n_last - n_first) / (t_last - t_first) if t_last > t_first else None

    builds = []
    for rep in range(args.build_repeats):
        copy = out.parent / f"{out.name}-build{rep}"
        shutil.copytree(out, copy)
        config = BuildConfig(omega="clusters", recall_queries=20, engine=engine,
                             workers=workers if engine == "ray" else None)
        t0 = time.perf_counter()
        info = build(Catalog.open(copy), config).info
        seconds = time.perf_counter() - t0
        builds.append({"total_s": round(seconds, 3), "statistics_s": round(info["timings_s"]["statistics"], 3),
                       "normalise_s": round(info["timings_s"]["normalise"], 3), "engine": info["engine"],
                       "build": str(Catalog.open(copy).current_build_dir())})
    return {
        "setting": args.setting, "engine": engine, "workers": result.options.workers,
        "torch_threads": model_threads, "ray_start_s": None if ray_start_s is None else round(ray_start_s, 2),
        "images": result.images, "objects": result.objects, "shards": len(Catalog.open(out).shard_paths()),
        "index_s": round(index_s, 3), "images_per_s": round(result.images / index_s, 1),
        "steady_images_per_s": None if steady is None else round(steady, 1),
        "builds": builds, "catalog": str(out),
    }


def compare(reference: dict, run: dict) -> dict:
    """Max differences between a run's catalog and build and the local ones."""
    import numpy as np

    from simdex.engine.build_files import BuildFiles
    from simdex.engine.catalog import Catalog

    def features(path: str):
        parts = list(Catalog.open(path).iter_features())
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    (ids_a, xa), (ids_b, xb) = features(reference["catalog"]), features(run["catalog"])
    a, b = BuildFiles(reference["builds"][0]["build"]), BuildFiles(run["builds"][0]["build"])
    same_ids = bool(np.array_equal(ids_a, ids_b))
    same_kept = bool(np.array_equal(a.read_pruning().kept, b.read_pruning().kept))
    out = {"same_ids": same_ids, "features_max_abs_diff": float(np.abs(xa - xb).max()) if same_ids else None,
           "same_kept_features": same_kept,
           "z_max_abs_diff": float(np.abs(a.z() - b.z()).max()) if same_kept and same_ids else None,
           "omega_max_abs_diff": float(np.abs(a.read_omega() - b.read_omega()).max()) if same_kept else None}
    out["equal"] = bool(same_ids and same_kept and out["features_max_abs_diff"] <= 1e-5
                        and out["z_max_abs_diff"] <= 1e-6 and out["omega_max_abs_diff"] <= 1e-6)
    return out


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8000, help="images indexed per run (the first N of --source)")
    ap.add_argument("--source", default="fashion-mnist")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--shard-images", type=int, default=1000, help="images per committed shard")
    ap.add_argument("--repeats", type=int, default=2, help="round-robin repeats of every setting")
    ap.add_argument("--build-repeats", type=int, default=2, help="builds per run (fresh copies of its catalog)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--catalog", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import ray

    from simdex.indexer.checkpoint import load_model

    loaded = load_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    runs: dict[str, list[dict]] = {name: [] for name in args.settings}
    try:
        for rep in range(args.repeats):
            for name in args.settings:
                cmd = [sys.executable, __file__, "--child", "--setting", name, "--catalog", str(tmp / f"{name}-{rep}"),
                       "--images", str(args.images), "--source", args.source, "--batch-size", str(args.batch_size),
                       "--shard-images", str(args.shard_images), "--build-repeats", str(args.build_repeats)]
                if args.model:
                    cmd += ["--model", args.model]
                print(f"repeat {rep + 1}/{args.repeats}, {name}: running…", file=sys.stderr, flush=True)
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
                if out.returncode:
                    sys.exit(f"{name} failed:\n{out.stderr[-4000:]}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  {run['images_per_s']} images/s, steady {run['steady_images_per_s']}, builds "
                      f"{[b['total_s'] for b in run['builds']]} s", file=sys.stderr, flush=True)
                runs[name].append(run)
        reference = runs["local"][0] if "local" in runs else next(iter(runs.values()))[0]
        checks = {name: compare(reference, r[0]) for name, r in runs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for name, rs in runs.items():
        builds = [b for r in rs for b in r["builds"]]
        summary[name] = {
            "engine": rs[0]["engine"], "workers": rs[0]["workers"], "torch_threads": rs[0]["torch_threads"],
            "images": rs[0]["images"], "objects": rs[0]["objects"], "shards": rs[0]["shards"],
            "ray_start_s": median([r["ray_start_s"] for r in rs]),
            "images_per_s": median([r["images_per_s"] for r in rs]),
            "steady_images_per_s": median([r["steady_images_per_s"] for r in rs]),
            "build_total_s": median([b["total_s"] for b in builds]),
            "build_statistics_s": median([b["statistics_s"] for b in builds]),
            "build_normalise_s": median([b["normalise_s"] for b in builds]),
            "build_tasks": builds[0]["engine"].get("tasks"),
        }

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in summary and b in summary and summary[a][key] and summary[b][key]:
            return round(summary[a][key] / summary[b][key], 3)
        return None

    derived = {
        "ray_w1_over_local_1t_images_per_s": ratio("ray-w1", "local-1t", "images_per_s"),
        "ray_w1_over_local_1t_steady": ratio("ray-w1", "local-1t", "steady_images_per_s"),
        "ray_w2_over_ray_w1_images_per_s": ratio("ray-w2", "ray-w1", "images_per_s"),
        "ray_w2_over_local_images_per_s": ratio("ray-w2", "local", "images_per_s"),
        "ray_w2_over_local_build_s": ratio("ray-w2", "local", "build_total_s"),
    }
    cpus = os.cpu_count()
    report = {
        "benchmark": "bench_scale",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": cpus, "python": platform.python_version(),
                    "ray": ray.__version__, "load_average_at_end": list(os.getloadavg()),
                    "note": f"one machine with {cpus} CPU cores: Ray's workers share them with the driver; "
                            "no multi-node or GPU run was made here"},
        "model": {"sha256": loaded.sha256, "config": loaded.model.config.to_dict(),
                  "num_features": loaded.model.num_features},
        "settings": {"images": args.images, "source": args.source, "batch_size": args.batch_size,
                     "shard_images": args.shard_images, "repeats": args.repeats, "build_repeats": args.build_repeats},
        "summary": summary, "derived": derived, "equal_to_local": checks, "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scale.json").write_text(json.dumps(report, indent=2) + "\n")

    def fmt(v, spec=",.0f"):
        return "–" if v is None else format(v, spec)

    lines = [
        f"# bench_scale ({report['date_utc']})", "",
        f"**{cpus} CPU cores, one machine** ({platform.platform()}, Ray {ray.__version__}; load average at the end "
        f"{report['machine']['load_average_at_end'][0]:.1f}). Two Ray workers share these cores with the driver "
        "that commits the shards: the figures measure Ray's overhead and exactness, not scaling.", "",
        f"`simdex index` of the first {args.images:,} images of `{args.source}` (model sha256 "
        f"{loaded.sha256[:12]}, {loaded.model.num_features} features, batch {args.batch_size}, a shard every "
        f"{args.shard_images:,} images), then `simdex build --omega clusters` of that catalog (a fresh copy each time). "
        f"Median of {args.repeats} round-robin repeats (builds: {args.repeats} × {args.build_repeats}).", "",
        "| setting | torch threads per model | Ray start s | index images/s | steady images/s | build s | statistics s | "
        "normalise s | build tasks | equal to local |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in summary.items():
        tasks = "–" if not s["build_tasks"] else "{statistics} + {normalise}".format(**s["build_tasks"])
        c = checks[name]
        lines.append(
            f"| {name} | {s['torch_threads']} | {fmt(s['ray_start_s'], '.1f')} | {fmt(s['images_per_s'])} | "
            f"{fmt(s['steady_images_per_s'])} | {fmt(s['build_total_s'], '.2f')} | {fmt(s['build_statistics_s'], '.2f')} | "
            f"{fmt(s['build_normalise_s'], '.2f')} | {tasks} | "
            f"{'yes' if c['equal'] else 'NO'} (features Δ {fmt(c['features_max_abs_diff'], '.1e')}, z Δ {fmt(c['z_max_abs_diff'], '.1e')}) |")
    d = derived
    lines += ["",
              f"- Ray at 1 worker vs the single process at 1 torch thread: {fmt(d['ray_w1_over_local_1t_images_per_s'], '.2f')}× "
              f"end to end, {fmt(d['ray_w1_over_local_1t_steady'], '.2f')}× steady (the overhead of Ray).",
              f"- 2 workers vs 1 worker: {fmt(d['ray_w2_over_ray_w1_images_per_s'], '.2f')}×; 2 workers vs the shipped "
              f"single process (2 torch threads): {fmt(d['ray_w2_over_local_images_per_s'], '.2f')}× — on {cpus} cores.",
              f"- Build on Ray (2 workers) vs local: {fmt(d['ray_w2_over_local_build_s'], '.2f')}× the seconds "
              "(the catalog is small: task start-up dominates).", "",
              "Reproduce: `" + " ".join([".venv/bin/python benchmarks/bench_scale.py", *sys.argv[1:]]) + "`", ""]
    (args.out / "bench_scale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
