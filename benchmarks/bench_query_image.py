"""Whole-process benchmark of `simdex query --image`: the numpy path (indexer/lite.py) against torch.

How to run (from the repository root, after the demo made catalogs/scenes; ~2 min):

    .venv/bin/python benchmarks/bench_query_image.py
    .venv/bin/python benchmarks/bench_query_image.py --catalog catalogs/fmnist --images 'data/fmnist-demo/*.png'

Writes benchmarks/results/bench_query_image.json and .md.

Each run is a fresh `simdex query --catalog C --image I -k 10` process (interpreter start,
imports, opening the build, the model's forward pass, the search, printing), with a
different query image each time, after one discarded run; medians over --repeats.
- lite: the model's numpy export is in the cache (what `simdex index` leaves behind);
- torch: every run gets an empty cache folder ($XDG_CACHE_HOME), so it loads the
  model with torch (and writes the export, as a first query does);
- floor: a process that only imports what the lite path needs (numpy, faiss, pyarrow,
  PIL and simdex's CLI), and one that imports torch alone.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIMDEX = [sys.executable, "-m", "simdex.cli.main"]


def wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="catalogs/scenes")
    parser.add_argument("--images", default="data/scenes-demo/test/*.png", help="glob of query images")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    images = sorted(glob.glob(args.images))[: args.repeats + 1]
    if not Path(args.catalog, "catalog.json").is_file() or len(images) < 2:
        raise SystemExit(f"need a catalog at {args.catalog} and query images {args.images}: run `make demo` first")

    base = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        lite_env = {**base, "XDG_CACHE_HOME": cache}
        query = [*SIMDEX, "query", "--catalog", args.catalog, "-k", "10", "--image"]
        wall([*query, images[0]], lite_env)  # exports the model (as `simdex index` would have)
        lite = [wall([*query, im], lite_env) for im in images[1:]]
    torch_runs = []
    for im in images[1:]:
        with tempfile.TemporaryDirectory() as cache:
            torch_runs.append(wall([*query, im], {**base, "XDG_CACHE_HOME": cache}))
    floor_lite = [wall([sys.executable, "-c", "import numpy, faiss, pyarrow, PIL.Image, simdex.cli.main"], base)
                  for _ in range(args.repeats)]
    floor_torch = [wall([sys.executable, "-c", "import torch"], base) for _ in range(args.repeats)]

    res = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "command": f"python benchmarks/bench_query_image.py --catalog {args.catalog} "
                               f"--images '{args.images}' --repeats {args.repeats}"},
        "catalog": args.catalog, "runs": len(lite),
        "lite_s": {"median": statistics.median(lite), "min": min(lite), "max": max(lite)},
        "torch_s": {"median": statistics.median(torch_runs), "min": min(torch_runs), "max": max(torch_runs)},
        "imports_lite_path_s": statistics.median(floor_lite), "import_torch_s": statistics.median(floor_torch),
    }
    res["speedup"] = res["torch_s"]["median"] / res["lite_s"]["median"]
    m = res["machine"]
    md = "\n".join([
        "# bench_query_image", "",
        f"Machine: {m['cpus']} CPUs, {m['processor']}, load average at start {m['loadavg']}; {m['date']}. "
        f"Command: `{m['command']}`.", "",
        "Whole `simdex query --image` processes, medians of "
        f"{res['runs']} (each a different image, after one discarded run):", "",
        "| path | median s | min s | max s |", "|---|---|---|---|",
        f"| numpy (indexer/lite.py, export cached) | {res['lite_s']['median']:.2f} | {res['lite_s']['min']:.2f} | "
        f"{res['lite_s']['max']:.2f} |",
        f"| torch (no export: empty cache) | {res['torch_s']['median']:.2f} | {res['torch_s']['min']:.2f} | "
        f"{res['torch_s']['max']:.2f} |", "",
        f"Speed-up {res['speedup']:.1f}×. Floor: importing what the numpy path needs takes "
        f"{res['imports_lite_path_s']:.2f} s; `import torch` alone {res['import_torch_s']:.2f} s.", ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_query_image.json").write_text(json.dumps(res, indent=2))
    (args.out / "bench_query_image.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
