"""What limits fuzzy P on Fashion-MNIST, measured: how the channel means are pooled.

`simdex eval` shows L2 on raw pixels ahead of every ranking of network features. One
suspect is the pooling: a Fashion-MNIST object fills its frame, so a per-channel mean
over the object's box is almost a global average pool and throws away the layout that
pixel L2 compares. This script measures that directly with the shipped model, outside
any catalog:

- features per image: the mean of every channel of every layer of φ over a g×g grid of
  the whole map (g = 1: one mean per channel, as the catalog stores; g = 2: four
  means per channel, one per quadrant), after the same fitting to 32×32 as the indexer;
- active features only (non-zero somewhere in the gallery), z-scored on the gallery;
- Ω from eq. 5 on the gallery's labels, and uniform; rankings by
  `simdex.evaluate.evaluate_arrays` (the code behind `simdex eval`), so fuzzy P, L2 of z,
  cosine of raw vectors and L2 of pixels are scored on the same queries.

    .venv/bin/python benchmarks/bench_quality_pooling.py --grids 1 2 4    # ≈ 5 min (the README's table)
    .venv/bin/python benchmarks/bench_quality_pooling.py                  # 1×1 and 2×2, ≈ 2 min

Writes benchmarks/results/bench_quality_pooling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from simdex.engine.omega import ClassStats, OmegaInputs, make_omega
from simdex.evaluate import evaluate_arrays
from simdex.indexer.checkpoint import DEFAULT_MODEL_PATH, load_model
from simdex.indexer.sources import border_background, fashion_mnist_source, fit_to_size

RESULTS = Path(__file__).resolve().parent / "results"


def pooled_features(net, images: np.ndarray, size: int, grids: list[int], batch: int = 256) -> dict[int, np.ndarray]:
    """images (n, 1, H, W) float32 → {g: (n, 800·g²) float32}: per-channel means over a g×g grid of each map."""
    out: dict[int, list[np.ndarray]] = {g: [] for g in grids}
    with torch.inference_mode():
        for a in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([fit_to_size(im, size, border_background(im))[0]
                                           for im in images[a:a + batch]]))
            _, acts = net(x)
            for g in grids:
                out[g].append(torch.cat([F.adaptive_avg_pool2d(m, g).flatten(1) for m in acts], 1).numpy())
    return {g: np.concatenate(v) for g, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=20_000, help="training images ranked (seeded sample)")
    ap.add_argument("--queries", type=int, default=500, help="test images used as queries (seeded sample)")
    ap.add_argument("--grids", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(2)

    loaded = load_model(DEFAULT_MODEL_PATH)
    net, size = loaded.model.eval(), loaded.model.config.image_size
    train, test = fashion_mnist_source(splits=("train",)), fashion_mnist_source(splits=("test",))
    rng = np.random.default_rng(args.seed)
    gi = np.sort(rng.choice(len(train), min(args.gallery, len(train)), replace=False))
    qi = np.sort(rng.choice(len(test), min(args.queries, len(test)), replace=False))
    g_img = np.stack([train.read(int(i)) for i in gi])
    q_img = np.stack([test.read(int(i)) for i in qi])
    g_lab = np.array([train.records[int(i)].label for i in gi], dtype=object)
    q_lab = np.array([test.records[int(i)].label for i in qi], dtype=object)

    t0 = time.perf_counter()
    g_feat = pooled_features(net, g_img, size, args.grids)
    q_feat = pooled_features(net, q_img, size, args.grids)
    extract_s = time.perf_counter() - t0
    pix_g, pix_q = g_img.reshape(len(g_img), -1), q_img.reshape(len(q_img), -1)

    rows = []
    for g in args.grids:
        xg, xq = g_feat[g], q_feat[g]
        active = np.any(xg != 0, axis=0)
        mean, std = xg[:, active].mean(0), xg[:, active].std(0) + 1e-12
        zg = ((xg[:, active] - mean) / std).astype(np.float32)
        zq = ((xq[:, active] - mean) / std).astype(np.float32)
        stats = ClassStats(zg.shape[1])
        stats.update(zg, g_lab)
        inputs = OmegaInputs(dim=zg.shape[1], v1=None, class_stats=stats)
        omegas = {"fuzzy P, Ω eq. 5": make_omega("clusters").estimate(inputs),
                  "fuzzy P, Ω uniform": make_omega("uniform").estimate(inputs)}
        t0 = time.perf_counter()
        res = evaluate_arrays(zq, zg, q_lab, g_lab, omegas, args.tau, raw_q=xq, raw_g=xg,
                              pix_q=pix_q if g == args.grids[0] else None,
                              pix_g=pix_g if g == args.grids[0] else None, ks=(1, 10, 100), threads=2)
        seconds = time.perf_counter() - t0
        for name, m in res.items():
            rows.append({"grid": g, "features": int(xg.shape[1]), "active": int(active.sum()), "ranking": name,
                         "p@1": m["p@1"], "p@10": m["p@10"], "p@100": m["p@100"], "map": m["map"]})
        print(f"grid {g}×{g}: {int(active.sum())} active of {xg.shape[1]} features, {seconds:.0f} s", flush=True)
        for name, m in res.items():
            print(f"  {name:28s} P@10 {m['p@10']:.4f}  mAP {m['map']:.4f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"gallery": len(gi), "queries": len(qi), "tau": args.tau, "seed": args.seed, "grids": args.grids,
            "model_sha256": loaded.sha256, "extract_s": round(extract_s, 1),
            "command": "python benchmarks/bench_quality_pooling.py " + " ".join(
                f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in (("gallery", args.gallery), ("queries", args.queries), ("grids", args.grids)))}
    (args.out / "bench_quality_pooling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# bench_quality_pooling", "",
             f"{meta['queries']} Fashion-MNIST test queries against {meta['gallery']:,} training images (seeded), "
             f"shipped model {loaded.sha256[:12]}, τ = {args.tau}, all active features (no SVD pruning). "
             f"Command: `{meta['command']}`.", "",
             "| pooling | active features | ranking | P@1 | P@10 | P@100 | mAP |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        pooling = "—" if r["ranking"] == "L2, raw pixels" else f"{r['grid']}×{r['grid']} grid"
        lines.append(f"| {pooling} | {r['active'] if pooling != '—' else '—'} | {r['ranking']} | {r['p@1']:.4f} | "
                     f"{r['p@10']:.4f} | {r['p@100']:.4f} | {r['map']:.4f} |")
    (args.out / "bench_quality_pooling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
