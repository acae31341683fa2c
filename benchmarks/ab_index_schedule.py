"""When should the decode worker work? An A/B of the local engine's schedule, kept because it was taken back.

The shipped schedule (`cur`, `indexer.runner._run`): the DataLoader asks the worker for the next batch
as soon as this process takes one, so the worker decodes while the model runs on every core. The
alternative (`after`): take the next batch only once the forward pass is done, so the worker decodes
while this process extracts objects and features (mostly one core); `after1`: the same, with the
extraction on one torch thread. Each variant indexes the same folder, the variants alternate round by
round, and each job is set against the mean of the bare forward passes on either side of it (wall and
CPU time, this process and the decode worker).

    .venv/bin/python benchmarks/ab_index_schedule.py [--folder F] [--images 3000] [--rounds 3]

Without --folder it writes the first N training scenes as 64×64 PNG (bench_index's `64:png`). Writes
benchmarks/results/ab_index_schedule.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_folder  # noqa: E402

from simdex.indexer import runner  # noqa: E402
from simdex.indexer.checkpoint import load_model  # noqa: E402
from simdex.indexer.runner import IndexOptions, index_source  # noqa: E402
from simdex.indexer.sources import fit_to_size, open_source  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _after_forward(one_thread: bool):
    """`runner._run` with the next batch requested after the forward pass (and, with `one_thread`,
    the extraction on one torch thread)."""

    def run(src, net, options, committer) -> None:
        cfg = net.config
        ds = runner._DecodedBatches(src, committer.start, committer.end, options.batch_size, cfg.in_channels,
                                    cfg.image_size)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=options.workers,
                                             collate_fn=runner._to_model_layout, persistent_workers=False,
                                             prefetch_factor=4 if options.workers else None)
        batches = iter(loader)
        threading.Thread(target=runner._warm_imports, daemon=True).start()
        threads = torch.get_num_threads()
        batch = next(batches, None)
        while batch is not None:
            with torch.inference_mode():
                logits, acts = net(batch["canvases"])
            following = next(batches, None)  # the worker decodes it now, beside the extraction
            if one_thread:
                torch.set_num_threads(1)
            objs = runner.objects_of(batch, (logits, acts), options, net.num_features)
            if one_thread:
                torch.set_num_threads(threads)
            committer.add(batch["first"], batch["count"], objs)
            batch = following

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=None, help="a folder of images (default: 64×64 PNG scenes)")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    folder = args.folder or str(made := make_folder("64:png", args.images))
    try:
        _compare(folder, args)
    finally:
        if args.folder is None:
            shutil.rmtree(made, ignore_errors=True)


def _compare(folder: str, args: argparse.Namespace) -> None:
    loaded = load_model(None)
    src = open_source(folder)
    n = min(args.images, len(src))
    net = loaded.model.eval().to(memory_format=torch.channels_last)
    size, channels = net.config.image_size, net.config.in_channels
    runs = {"cur": runner._run, "after": _after_forward(False), "after1": _after_forward(True)}

    def cpu_s() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    xs = [torch.from_numpy(np.stack([fit_to_size(src.read(i, channels), size)[0] for i in range(s, min(n, s + 256))]))
          .contiguous(memory_format=torch.channels_last) for s in range(0, n, 256)]

    def forward() -> tuple[float, float]:
        with torch.inference_mode():
            t, c = time.perf_counter(), cpu_s()
            for x in xs:
                net(x)
            return time.perf_counter() - t, cpu_s() - c

    def job(name: str) -> tuple[float, float]:
        runner._run = runs[name]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                t, c = time.perf_counter(), cpu_s()
                index_source(src, Path(tmp) / "c", loaded, IndexOptions(batch_size=256, limit=n, views=0))
                return time.perf_counter() - t, cpu_s() - c
        finally:
            runner._run = runs["cur"]

    with torch.inference_mode():
        net(xs[0])  # warm-up
    each: dict[str, list] = {k: [] for k in runs}
    before = forward()
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            j = job(name)
            after = forward()
            each[name].append({"wall_ratio": (before[0] + after[0]) / 2 / j[0],
                               "cpu_ratio": (before[1] + after[1]) / 2 / j[1],
                               "images_per_s": n / j[0], "cpu_ms_per_image": j[1] / n * 1e3})
            print(name, {k: round(v, 3) for k, v in each[name][-1].items()}, flush=True)
            before = after
    summary = {name: {k: round(float(np.median([e[k] for e in v])), 3) for k in v[0]} for name, v in each.items()}
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "images": n, "rounds": args.rounds,
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "median": summary, "each": each}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ab_index_schedule.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# ab_index_schedule ({res['date']})", "",
             f"{n} images of {'the 64×64 PNG scenes' if args.folder is None else args.folder}, {args.rounds} rounds, "
             f"{res['cpus']} CPUs, {res['torch_threads']} torch threads; medians over rounds.", "",
             "| schedule | index/forward (wall) | CPU ratio | index images/s | CPU ms/image |", "|---|---:|---:|---:|---:|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['wall_ratio']:.2f} | {s['cpu_ratio']:.2f} | {s['images_per_s']:.0f} | "
                     f"{s['cpu_ms_per_image']:.2f} |")
    lines += ["", "cur: the worker decodes beside the forward pass (shipped); after: beside the extraction; "
              "after1: beside a one-thread extraction.", "",
              "Reproduce: `.venv/bin/python benchmarks/ab_index_schedule.py`"]
    (RESULTS / "ab_index_schedule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
