"""CPU time per image of each stage an index job spends beside the forward pass, on a quiet machine.

The first 1,024 test scenes (64×64 PNG) are decoded and fitted as the decode worker does
(`runner._DecodedBatches`, timed in this process), then, three times over batches of 256 with the
shipped model in channels_last: the forward pass, the segments' components (`find_objects`) and
the pooling of the default region's features (`object_features`), each timed by process CPU time
and by wall time. The ratio index/forward cannot pass forward / (forward + the rest) when every
core is busy. Beside them, not in that sum: the components and pooling of `--objects all` (every
component of at least 4 pixels, several per scene).

    .venv/bin/python benchmarks/profile_stages.py        # needs the scenes: simdex scenes --out data/scenes

Writes benchmarks/results/profile_stages.{json,md} (`--name` for another name, e.g. to keep a
run of older code beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from simdex.indexer import runner
from simdex.indexer.checkpoint import load_model
from simdex.indexer.defaults import DEFAULT_REGION
from simdex.indexer.extract import find_objects, object_features
from simdex.indexer.sources import find_scenes, open_source

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="profile_stages", help="results file name (default: profile_stages)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    src = open_source(str(find_scenes() / "test.csv"))
    n = min(1024, len(src))
    ds = runner._DecodedBatches(src, 0, n, 256, 3, 64)
    c0 = time.process_time()
    batches = [runner._to_model_layout(ds[k]) for k in range(len(ds))]
    decode = (time.process_time() - c0) / n * 1e3
    loaded = load_model(None)
    net = runner.inference_net(loaded.model)
    cpu = {"forward": 0.0, "components": 0.0, "pooling": 0.0, "components, --objects all": 0.0,
           "pooling, --objects all": 0.0}
    wall = dict(cpu)
    rounds = 3
    with torch.inference_mode():
        net(batches[0]["canvases"])  # warm-up
        for _ in range(rounds):
            for b in batches:
                marks = [(time.process_time(), time.perf_counter())]
                logits, acts = net(b["canvases"])
                marks.append((time.process_time(), time.perf_counter()))
                objs = find_objects(runner._foreground(logits), "largest", 1)
                marks.append((time.process_time(), time.perf_counter()))
                object_features(acts, objs, DEFAULT_REGION)
                marks.append((time.process_time(), time.perf_counter()))
                every = find_objects(runner._foreground(logits), "all", 4)
                marks.append((time.process_time(), time.perf_counter()))
                object_features(acts, every, DEFAULT_REGION)
                marks.append((time.process_time(), time.perf_counter()))
                for key, (a, z) in zip(cpu, zip(marks, marks[1:])):
                    cpu[key] += z[0] - a[0]
                    wall[key] += z[1] - a[1]
    per = {k: v / (rounds * n) * 1e3 for k, v in cpu.items()}
    per["decoding (one process)"] = decode
    rest = sum(v for k, v in per.items() if k != "forward" and "--objects all" not in k)
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model_sha256": loaded.sha256,
           "cpus": os.cpu_count(), "load_average": os.getloadavg(), "images": n, "region": DEFAULT_REGION,
           "cpu_ms_per_image": per, "wall_ms_per_image": {k: v / (rounds * n) * 1e3 for k, v in wall.items()},
           "ceiling_without_rows_and_parquet": per["forward"] / (per["forward"] + rest)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# {args.name} ({res['date']})", "",
             f"The shipped model (sha256 {loaded.sha256[:12]}), {n} test scenes (64×64 PNG), batches of 256, "
             f"region {DEFAULT_REGION}; {res['cpus']} CPUs, 2 torch threads, load average "
             f"{' '.join(f'{x:.1f}' for x in res['load_average'])}.", "",
             "| stage | CPU ms per image | wall ms per image |", "|---|---:|---:|"]
    for k, v in per.items():
        w = res["wall_ms_per_image"].get(k)
        lines.append(f"| {k} | {v:.3f} | {'' if w is None else f'{w:.3f}'} |")
    lines += ["", f"forward / (forward + components + pooling + decoding) = "
              f"{res['ceiling_without_rows_and_parquet']:.2f}: the most index/forward can reach with every core busy, "
              "before rows, Parquet and the journal.", "",
              "Reproduce: `.venv/bin/python benchmarks/profile_stages.py"
              + ("" if args.name == "profile_stages" else f" --name {args.name}") + "`"]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
