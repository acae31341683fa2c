"""Throughput of the sparse U-Net on this machine: inference and training images/s.

For each width (0.5, 1.0) and image size (32, 256): FLOPs per image (counted by
torch's FlopCounterMode, a multiply-add = 2 FLOPs), images/s of the forward pass in
inference mode and of a training step (forward + backward + Adam), and the GFLOP/s
achieved. Warm-up batches are discarded; the median of the timed repeats is reported.

    .venv/bin/python benchmarks/bench_model.py            # all settings
    .venv/bin/python benchmarks/bench_model.py --repeats 3 --sizes 32

Writes benchmarks/results/bench_model.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from simdex.indexer.model import SparseUNet, UNetConfig

RESULTS = Path(__file__).parent / "results"


def count_flops(net: SparseUNet, x: torch.Tensor, train: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        logits, _ = net(x)
        if train:
            logits.sum().backward()
    return counter.get_total_flops()


def time_it(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(width: float, size: int, batch: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = SparseUNet(UNetConfig(width=width, image_size=size))
    x = torch.rand(batch, 1, size, size)
    target = (x[:, 0] > 0.5).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    fwd_flops = count_flops(net, x[:1], train=False)
    train_flops = count_flops(net, x[:1], train=True)
    net.zero_grad(set_to_none=True)

    def infer():
        with torch.inference_mode():
            net.eval()
            net(x)

    def step():
        net.train()
        logits, _ = net(x)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_inf = time_it(infer, warmup, repeats)
    t_train = time_it(step, warmup, repeats)
    return {
        "width": width, "size": size, "batch": batch,
        "features": net.num_features,
        "forward_mflop_per_image": fwd_flops / 1e6,
        "train_mflop_per_image": train_flops / 1e6,
        "inference_images_per_s": batch / t_inf,
        "inference_gflop_per_s": fwd_flops * batch / t_inf / 1e9,
        "train_images_per_s": batch / t_train,
        "train_gflop_per_s": train_flops * batch / t_train / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        batch = 128 if size <= 64 else 4
        for width in args.widths:
            r = bench(width, size, batch, args.warmup, args.repeats)
            rows.append(r)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_model.json").write_text(json.dumps({"machine": machine, "results": rows}, indent=2))
    lines = ["| width | size | features | fwd MFLOP/img | infer img/s | infer GFLOP/s | train img/s | train GFLOP/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['size']} | {r['features']} | {r['forward_mflop_per_image']:.0f} | "
                     f"{r['inference_images_per_s']:.1f} | {r['inference_gflop_per_s']:.1f} | "
                     f"{r['train_images_per_s']:.1f} | {r['train_gflop_per_s']:.1f} |")
    md = f"Machine: {machine}\n\n" + "\n".join(lines) + "\n"
    (RESULTS / "bench_model.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
