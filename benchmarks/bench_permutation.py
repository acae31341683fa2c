"""The approximate (greedy) matcher against the optimal assignment, as in Wald et al.'s Fig. 5.

The semantic similarity of two responses is Pearson's r after the best matching of their
spatial positions (`simdex.engine.permutation`). The optimum is a linear assignment
(scipy's `linear_sum_assignment`, O(n³)); the approximate matcher is the greedy matching
(best remaining pair first). This script measures, for several set sizes n, how far the
greedy r is from the optimal r and how much time each takes, on real responses: the
shipped model's layer (default C91, the one `--permutation-invariant` uses) over random
pairs of Fashion-MNIST test images, its whole map pooled to g×g positions (n = g²; g = 32
is the full map of that layer).

Per size: Pearson and Spearman correlation of greedy vs optimal r over the pairs (Fig. 5's
scatter), mean and worst |error|, the share of pairs within 0.01, the mean of r with no
matching (position by position) for reference, and the median time per pair of each matcher.

    .venv/bin/python benchmarks/bench_permutation.py                 # ≈ 3 min on 2 loaded cores
    .venv/bin/python benchmarks/bench_permutation.py --grids 4 8 --pairs 50

Writes benchmarks/results/bench_permutation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from simdex.engine.permutation import semantic_similarity, spatial_similarity
from simdex.indexer.checkpoint import DEFAULT_MODEL_PATH, load_model
from simdex.indexer.sources import border_background, fashion_mnist_source, fit_to_size

RESULTS = Path(__file__).resolve().parent / "results"


def layer_maps(net, images: np.ndarray, layer: int) -> torch.Tensor:
    """images (n, C, H, W) float32 → that layer's maps (n, C, h, w), fitted as the indexer fits them."""
    x = torch.from_numpy(np.stack([fit_to_size(im, net.config.image_size, border_background(im))[0] for im in images]))
    with torch.inference_mode():
        return net(x)[1][layer]


def timed(fn, *args) -> tuple[float, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)


def measure(maps: torch.Tensor, grid: int, pairs: np.ndarray) -> dict:
    resp = F.adaptive_avg_pool2d(maps, grid).flatten(2).transpose(1, 2).numpy().astype(np.float64)  # (m, n, C)
    semantic_similarity(resp[0], resp[1], "optimal")  # warm-up (scipy's first call), discarded
    opt, greedy, spatial, t_opt, t_greedy = [], [], [], [], []
    for i, j in pairs:
        r, t = timed(semantic_similarity, resp[i], resp[j], "optimal")
        opt.append(r)
        t_opt.append(t)
        r, t = timed(semantic_similarity, resp[i], resp[j], "greedy")
        greedy.append(r)
        t_greedy.append(t)
        spatial.append(spatial_similarity(resp[i], resp[j]))
    opt, greedy, spatial = np.array(opt), np.array(greedy), np.array(spatial)
    err = opt - greedy
    return {
        "grid": grid, "positions": grid * grid, "channels": int(resp.shape[2]), "pairs": len(pairs),
        "pearson_greedy_vs_optimal": round(float(np.corrcoef(opt, greedy)[0, 1]), 4),
        "spearman_greedy_vs_optimal": round(float(np.corrcoef(rank(opt), rank(greedy))[0, 1]), 4),
        "mean_abs_error": round(float(np.abs(err).mean()), 4), "worst_abs_error": round(float(np.abs(err).max()), 4),
        "share_within_0.01": round(float((np.abs(err) <= 0.01).mean()), 3),
        "greedy_above_optimal": int((err < -1e-9).sum()),  # must be 0: the optimum is the maximum
        "mean_r_optimal": round(float(opt.mean()), 4), "mean_r_greedy": round(float(greedy.mean()), 4),
        "mean_r_no_matching": round(float(spatial.mean()), 4),
        "pearson_no_matching_vs_optimal": round(float(np.corrcoef(opt, spatial)[0, 1]), 4),
        "median_ms_optimal": round(1e3 * float(np.median(t_opt)), 3),
        "median_ms_greedy": round(1e3 * float(np.median(t_greedy)), 3),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Greedy vs optimal matching of positions (Wald et al., Fig. 5)", "",
        f"Layer {result['layer']} of the shipped model, {result['pairs']} random pairs of Fashion-MNIST test images "
        f"per size (seed {result['seed']}), the map pooled to g×g positions. Machine: {result['machine']['cpus']} CPUs "
        f"({result['machine']['processor']}), shared with other jobs (load average {result['machine']['load_avg']}); "
        "times are medians per pair.", "",
        "| positions n | channels | r greedy vs optimal: Pearson / Spearman | mean / worst abs error | pairs within 0.01 "
        "| mean r: optimal / greedy / no matching | ms per pair: optimal / greedy | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["sizes"]:
        lines.append(
            f"| {s['positions']:,} | {s['channels']} | {s['pearson_greedy_vs_optimal']:.4f} / "
            f"{s['spearman_greedy_vs_optimal']:.4f} | {s['mean_abs_error']:.4f} / {s['worst_abs_error']:.4f} | "
            f"{100 * s['share_within_0.01']:.0f} % | {s['mean_r_optimal']:.3f} / {s['mean_r_greedy']:.3f} / "
            f"{s['mean_r_no_matching']:.3f} | {s['median_ms_optimal']:.2f} / {s['median_ms_greedy']:.2f} | "
            f"{s['median_ms_optimal'] / max(s['median_ms_greedy'], 1e-9):.1f}× |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[4, 8, 16, 32], help="positions per side (n = g²)")
    ap.add_argument("--pairs", type=int, default=100, help="random image pairs per size")
    ap.add_argument("--layer", default="C91", help="layer of the shipped model's φ")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (the machine is shared)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_permutation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_model(DEFAULT_MODEL_PATH).model.eval()
    names = [p.name for p in net.phi]
    if args.layer not in names:
        raise SystemExit(f"no layer {args.layer}; layers: {', '.join(names)}")
    src = fashion_mnist_source(splits=("test",))
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(src), size=2 * args.pairs, replace=False)
    maps = layer_maps(net, np.stack([src.read(int(i), net.config.in_channels) for i in picked]), names.index(args.layer))
    pairs = np.arange(2 * args.pairs).reshape(args.pairs, 2)
    sizes = []
    for g in args.grids:
        t0 = time.perf_counter()
        sizes.append(measure(maps, g, pairs))
        print(f"n = {g * g}: {json.dumps(sizes[-1])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {
        "layer": args.layer, "pairs": args.pairs, "seed": args.seed, "sizes": sizes,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "threads": args.threads, "load_avg": round(os.getloadavg()[0], 1)},
        "command": "python benchmarks/bench_permutation.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in
            (("grids", args.grids), ("pairs", args.pairs), ("layer", args.layer), ("seed", args.seed))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
