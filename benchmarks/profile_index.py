"""Where an index job's time goes, and what the in-place ReLU and the folded upsampling are worth.

1. The shipped model's forward pass over batches of 256 of the first 1,024 training scenes
   (64×64 PNG), in rounds that alternate the two ReLU forms of `indexer.model._Level` (in place,
   the default without autograd, and out of place, as before), median images/s of each; then the
   same with the decoder's upsampling folded into its first convolution (`_Level.forward_up`, the
   default without autograd) against upsampling and concatenating first.
2. One whole `simdex index` job (`indexer.runner.index_source`) over the first `--images` scenes,
   under cProfile: the share of the job's time in the forward pass, the features' pooling,
   the segments' components, reading decoded batches from the decode worker, and Parquet.

    .venv/bin/python benchmarks/profile_index.py          # needs the scenes: simdex scenes --out data/scenes

Writes benchmarks/results/profile_index.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_index import make_folder

from simdex.indexer import model as model_module
from simdex.indexer.checkpoint import load_model
from simdex.indexer.runner import IndexOptions, index_source
from simdex.indexer.sources import fit_to_size, open_source

RESULTS = Path(__file__).resolve().parent / "results"
# the stages of the job: label → (file, function), by cumulative time (the largest entry: the model's
# forward is SparseUNet.forward, which holds its levels' forwards)
STAGES = {
    "forward pass": ("indexer/model.py", "forward"),
    "pooling the features (object_features)": ("indexer/extract.py", "object_features"),
    "segments' components (find_objects)": ("indexer/extract.py", "find_objects"),
    "Parquet writes": ("parquet/core.py", "write_table"),
    "rows, shards and journal (_Committer.add, Parquet included)": ("indexer/runner.py", "add"),
}


def _out_of_place(self, x):
    a1 = F.relu(self.conv1(x))
    return a1, F.relu(self.conv2(a1))


def _upsample_then_concatenate(self, low, skip):
    return self.forward(torch.cat([F.interpolate(low, scale_factor=2, mode="nearest"), skip], 1))


def alternating_rounds(net, xs, rounds: int, variants: dict[str, dict[str, object]]) -> dict:
    """Forward images/s of two variants of `indexer.model._Level` (name → {method name: function}), in
    rounds that alternate which goes first; median and every round of each. The methods are put back."""
    saved = {m: getattr(model_module._Level, m) for methods in variants.values() for m in methods}
    rates = {name: [] for name in variants}
    names = list(variants)
    with torch.inference_mode():
        net(xs[0])  # warm-up, discarded
        for r in range(rounds):
            for name in (names if r % 2 else names[::-1]):
                for m, f in {**saved, **variants[name]}.items():
                    setattr(model_module._Level, m, f)
                t = time.perf_counter()
                for x in xs:
                    net(x)
                rates[name].append(sum(len(x) for x in xs) / (time.perf_counter() - t))
    for m, f in saved.items():
        setattr(model_module._Level, m, f)
    return {k: {"median": float(np.median(v)), "rounds": v} for k, v in rates.items()}


def relu_rounds(net, xs, rounds: int) -> dict:
    """Both ReLU forms with the decoder upsampled and concatenated first (every level's ReLU is `forward`'s)."""
    in_place = model_module._Level.forward
    return alternating_rounds(net, xs, rounds, {
        "in place": {"forward": in_place, "forward_up": _upsample_then_concatenate},
        "out of place": {"forward": _out_of_place, "forward_up": _upsample_then_concatenate}})


def decoder_rounds(net, xs, rounds: int) -> dict:
    """The decoder's upsampling folded into conv1 (`_Level.forward_up`, the default without autograd)
    against the map upsampled and concatenated first."""
    return alternating_rounds(net, xs, rounds, {"folded": {"forward_up": model_module._Level.forward_up},
                                                "upsampled and concatenated": {"forward_up": _upsample_then_concatenate}})


def profile_job(src, loaded, images: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="profile-index-") as tmp:
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        index_source(src, Path(tmp) / "catalog", loaded, IndexOptions(batch_size=256, views=0, limit=images))
        prof.disable()
        total = time.perf_counter() - t
    stats = pstats.Stats(prof).stats
    shares = {}
    for label, (file, func) in STAGES.items():
        shares[label] = max([v[3] for (f, _, fn), v in stats.items() if f.endswith(file) and fn == func] or [0.0])
    shares["reading decoded batches (posix.read)"] = sum(
        v[2] for (_, _, fn), v in stats.items() if fn == "<built-in method posix.read>")
    return {"seconds": total, "images_per_s": images / total, "stage_seconds": shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    loaded = load_model(None)
    net = loaded.model.eval().to(memory_format=torch.channels_last)
    folder = make_folder("64:png", args.images)
    src = open_source(str(folder))
    batches = [np.stack([fit_to_size(src.read(i, 3), 64)[0] for i in range(a, a + 256)]) for a in range(0, 1024, 256)]
    xs = [torch.from_numpy(b).contiguous(memory_format=torch.channels_last) for b in batches]
    relu = relu_rounds(net, xs, args.rounds)
    decoder = decoder_rounds(net, xs, args.rounds)
    job = profile_job(src, loaded, args.images)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = {"args": vars(args), "machine": machine, "relu": relu, "decoder": decoder, "job": job}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile_index.json").write_text(json.dumps(out, indent=2) + "\n")
    speed = relu["in place"]["median"] / relu["out of place"]["median"]
    lines = ["# profile_index", "",
             f"The shipped model, 64×64 PNG scenes, batches of 256; {machine['cpus']} CPUs, {machine['torch_threads']} "
             f"torch threads, load average {machine['loadavg']}, {machine['date']}.", "",
             f"Forward pass, {args.rounds} alternating rounds of 1,024 images: ReLU in place "
             f"{relu['in place']['median']:.0f} images/s, out of place {relu['out of place']['median']:.0f} "
             f"(median; {speed:.2f}×).", "",
             f"Forward pass, the same rounds: decoder upsampling folded into conv1 "
             f"{decoder['folded']['median']:.0f} images/s, upsampled and concatenated first "
             f"{decoder['upsampled and concatenated']['median']:.0f} (median; "
             f"{decoder['folded']['median'] / decoder['upsampled and concatenated']['median']:.2f}×).", "",
             f"One index job of {args.images:,} images under cProfile: {job['seconds']:.1f} s "
             f"({job['images_per_s']:.0f} images/s; the profiler slows it).", "",
             "| stage | s | share of the job |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / job['seconds']:.0%} |" for k, v in job["stage_seconds"].items()]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/profile_index.py`"]
    (RESULTS / "profile_index.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
