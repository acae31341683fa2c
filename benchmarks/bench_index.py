"""Benchmark of `simdex index` on Fashion-MNIST: throughput against the bare forward pass,
and peak memory at two catalog sizes.

For each size N (default 10,000 and 70,000 images, the first N of `fashion-mnist`,
train then test) a fresh subprocess:

1. runs the bare model forward pass over the N images (fitted to the model's canvas per
   batch outside the timed region), in the same batch size, layout (channels_last) and
   `torch.inference_mode`; a warm-up batch is discarded;
2. runs the whole index job (`indexer.runner.index_source`: decode, forward, objects,
   features, Parquet shards, journal) over all N images into a new catalog, timed end
   to end, then the bare forward pass again; `--repeats R` does this R times. Each job's
   ratio is its rate against the mean rate of the passes before and after it, so load
   changes during the run (the machine may be shared) hit both sides; the ratio reported
   is the median of the jobs';
3. reads its peak resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss` and
   /proc's VmHWM) after the first index job.

Both sizes read the same source (all 70,000 images are held in memory by the IDX
source either way), so the two peaks differ only by what grows with the catalog.

With `--folders 64:png 256:jpg` the source is instead a folder of image files: the first
N scenes of the scenes benchmark (`simdex scenes`) resized to 64×64 PNG and 256×256 JPEG,
so decoding and resizing (in the indexer's DataLoader workers) are measured too.

Run (from the repository root; uses the shipped model, or --model FILE):

    .venv/bin/python benchmarks/bench_index.py                  # 10k and 70k
    .venv/bin/python benchmarks/bench_index.py --folders 64:png 256:jpg --sizes 3000 --repeats 3 --name bench_index_folders
    .venv/bin/python benchmarks/bench_index.py --sizes 2000 --untrained   # quick dry run

Writes benchmarks/results/bench_index.json and bench_index.md (a Markdown table).
Targets: index images/s >= 0.9 x bare forward images/s (issue 12; 0.8 in issue 3); peak RSS at
70k within 10 % of that at 10k.
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

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(args: argparse.Namespace) -> dict:
    """One size, in this process: forward, index, forward; returns the measurements."""
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from simdex.indexer.checkpoint import load_model
    from simdex.indexer.runner import IndexOptions, index_source
    from simdex.indexer.sources import fit_to_size, open_source

    loaded = load_model(args.model)
    net = loaded.model.eval()
    size, channels = net.config.image_size, net.config.in_channels
    src = open_source(args.source)
    n = min(args.size, len(src))

    def cpu_s() -> float:
        """CPU seconds of this process and its finished children (the index job's decode workers)."""
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    fwd_cpu: list[float] = []

    def forward_pass(first: int, end: int) -> float:
        """Seconds of the bare forward pass over images [first, end); its CPU seconds go to fwd_cpu."""
        cl = torch.channels_last  # as the indexer runs it
        net.to(memory_format=cl)
        with torch.inference_mode():
            warm = np.stack([fit_to_size(src.read(i, channels), size)[0] for i in range(args.batch_size)])
            net(torch.from_numpy(warm).contiguous(memory_format=cl))  # warm-up, discarded
            seconds = cpu = 0.0
            for start in range(first, end, args.batch_size):
                x = torch.from_numpy(np.stack([fit_to_size(src.read(i, channels), size)[0]
                                               for i in range(start, min(end, start + args.batch_size))]))
                x = x.contiguous(memory_format=cl)
                t0, c0 = time.perf_counter(), cpu_s()
                net(x)
                seconds += time.perf_counter() - t0
                cpu += cpu_s() - c0
        fwd_cpu.append(cpu)
        return seconds

    # forward, index, forward, index, …, forward: each index job against the mean rate of the passes on
    # either side of it, so a change of the machine's speed during the run hits both; medians over repeats
    fwd_s = [forward_pass(0, n)]
    index_s, index_cpu, result, peak_rss_mib, hwm_mib, catalog_bytes = [], [], None, None, None, None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
            t0, c0 = time.perf_counter(), cpu_s()
            result = index_source(src, Path(tmp) / "catalog", loaded,
                                  IndexOptions(batch_size=args.batch_size, workers=args.workers, limit=n,
                                               views=0))  # the main pass only: views are a step after it
            index_s.append(time.perf_counter() - t0)
            index_cpu.append(cpu_s() - c0)
            if peak_rss_mib is None:  # after the first job, as before repeats existed
                peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                hwm_mib = _vm_hwm_mib()
                catalog_bytes = sum(p.stat().st_size for p in (Path(tmp) / "catalog").rglob("*") if p.is_file())
        fwd_s.append(forward_pass(0, n))
    ratios = [(fwd_s[r] + fwd_s[r + 1]) / 2 / index_s[r] for r in range(args.repeats)]
    cpu_ratios = [(fwd_cpu[r] + fwd_cpu[r + 1]) / 2 / index_cpu[r] for r in range(args.repeats)]
    index_ips = n / float(np.median(index_s))
    forward_ips = n / float(np.median(fwd_s))
    return {
        "images": n, "objects": result.objects, "skipped": dict(result.errors),
        "index_s": round(float(np.median(index_s)), 2), "index_images_per_s": round(index_ips, 1),
        "forward_images_per_s": round(forward_ips, 1),
        "index_s_each": [round(t, 2) for t in index_s], "forward_s_each": [round(t, 2) for t in fwd_s],
        "ratio": round(float(np.median(ratios)), 3), "ratio_each": [round(r, 3) for r in ratios],
        # CPU seconds (this process and the decode workers) of the bare pass against the job's: what the
        # job spends beside the forward pass, steadier than wall time on a shared machine
        "cpu_ratio": round(float(np.median(cpu_ratios)), 3), "cpu_ratio_each": [round(r, 3) for r in cpu_ratios],
        "index_cpu_ms_per_image": round(float(np.median(index_cpu)) / n * 1e3, 3),
        "forward_cpu_ms_per_image": round(float(np.median(fwd_cpu)) / n * 1e3, 3),
        "peak_rss_mib": round(peak_rss_mib, 1), "vm_hwm_mib": None if hwm_mib is None else round(hwm_mib, 1),
        "catalog_mib": round(catalog_bytes / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
    }


TRAIN_VARIANTS = {  # name → (channels_last, bf16 autocast)
    "NCHW fp32": (False, False),
    "channels_last fp32 (before)": (True, False),
    "channels_last bf16 (after)": (True, True),
}


def train_throughput(steps: int = 8, batch_size: int = 32, width: float = 0.5, size: int = 64) -> dict:
    """Training images/s of `simdex train`'s step (`indexer.train.train_step`: forward, sparsity
    objective, backward, Adam; the augmentation outside the timing) on the scenes' first images:
    NCHW, channels_last (the previous default) and channels_last with the forward under bf16
    autocast (`--precision bf16`, the default now), alternating variants step by step so load
    changes hit all; the first step of each is discarded.
    Also the CPU time of decoding and fitting one training image and its mask, which `--cache-gb`
    spends once per run instead of once per epoch."""
    import dataclasses

    import numpy as np
    import torch

    from simdex.indexer.model import UNetConfig, build_model
    from simdex.indexer.sources import open_source
    from simdex.indexer.train import SegmentationDataset, TrainConfig, augment_batch, collate, train_step

    cfg = TrainConfig(width=width, image_size=size, in_channels=3, batch_size=batch_size)
    src = open_source("fashion-mnist-scenes:train")
    ds = SegmentationDataset(src, np.arange(max(batch_size, 512)), size, 3, cfg.mask_threshold)
    c0 = time.process_time()
    items = [ds[i] for i in range(len(ds))]
    decode_ms = (time.process_time() - c0) / len(ds) * 1e3
    x0, mask0, bg0 = collate(items[:batch_size])
    nets = {}
    for name, (channels_last, _) in TRAIN_VARIANTS.items():
        torch.manual_seed(0)
        net = build_model(UNetConfig(width=width, in_channels=3, image_size=size))
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        nets[name] = (net, torch.optim.Adam(net.parameters(), lr=1e-3), net.phi_convs(), [])
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps + 1):
        for name, (net, opt, convs, times) in nets.items():
            channels_last, bf16 = TRAIN_VARIANTS[name]
            x, mask = augment_batch(x0, mask0, bg0, cfg, gen)
            step_cfg = dataclasses.replace(cfg, precision="bf16" if bf16 else "fp32")
            t0 = time.perf_counter()
            train_step(net, opt, convs, x, mask, step_cfg, channels_last=channels_last)
            times.append(time.perf_counter() - t0)
    out = {name: round(batch_size / float(np.median(t[1:])), 1) for name, (*_, t) in nets.items()}
    before, after = out["channels_last fp32 (before)"], out["channels_last bf16 (after)"]
    return {"images_per_s": out, "speedup": round(after / before, 2), "steps": steps, "batch_size": batch_size,
            "width": width, "image_size": size, "torch_threads": torch.get_num_threads(),
            "decode_cpu_ms_per_image": round(decode_ms, 3)}


def make_folder(spec: str, n: int) -> Path:
    """A folder of the first n scenes (train.csv) resized to PX×PX and saved as FORMAT: spec 'PX:FORMAT'."""
    import csv

    from PIL import Image

    from simdex.indexer.sources import find_scenes

    px, fmt = spec.split(":")
    scenes = find_scenes()
    folder = Path(tempfile.mkdtemp(prefix=f"bench-index-{px}-{fmt}-"))
    with open(scenes / "train.csv", newline="") as f:
        rows = [r for r, _ in zip(csv.DictReader(f), range(n))]
    for k, r in enumerate(rows):
        img = Image.open(scenes / r["path"]).convert("RGB").resize((int(px), int(px)), Image.Resampling.BICUBIC)
        img.save(folder / f"{k:06d}.{fmt}", quality=90) if fmt in ("jpg", "jpeg") else img.save(folder / f"{k:06d}.{fmt}")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 70_000], help="catalog sizes (images)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--untrained", action="store_true",
                    help="use an untrained width-0.5 model (a dry run before the shipped model exists)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the indexer's choice)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--source", default="fashion-mnist", help="source to index (default: fashion-mnist)")
    ap.add_argument("--folders", nargs="*", default=None, metavar="PX:FORMAT",
                    help="instead of --source: folders of the scenes' images resized to PX and saved as FORMAT "
                         "(png, jpg), e.g. 64:png 256:jpg; one run each, at the first of --sizes")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="also measure training throughput over this many steps per layout (0: skip)")
    ap.add_argument("--name", default="bench_index", help="stem of the result files")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1,
                    help="index jobs per source, each between two forward passes (the ratio is their median)")
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    model_label = args.model or "shipped default (indexer/models/default.pt)"
    if args.untrained:
        import torch

        from simdex.indexer.checkpoint import save_model
        from simdex.indexer.model import SparseUNet, UNetConfig

        torch.manual_seed(0)
        args.model = str(Path(tempfile.mkdtemp(prefix="bench-index-")) / "untrained.pt")
        save_model(SparseUNet(UNetConfig(width=0.5)), args.model)
        model_label = "untrained width-0.5 U-Net (dry run)"
    from simdex.indexer.checkpoint import load_model

    loaded = load_model(args.model)
    runs = []
    jobs = [(size, args.source, args.source) for size in args.sizes]
    if args.folders:
        jobs = [(args.sizes[0], str(make_folder(spec, args.sizes[0])), spec) for spec in args.folders]
    try:
        for size, source, label in jobs:
            cmd = [sys.executable, __file__, "--child", "--size", str(size), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), "--source", source,
                   "--repeats", str(args.repeats)]
            if args.model:
                cmd += ["--model", str(args.model)]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            print(f"size {size:,}: running…", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if out.returncode:
                sys.exit(f"child for size {size} failed:\n{out.stderr}")
            run = {"source": label, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(f"size {size:,}: {run}", file=sys.stderr, flush=True)
            runs.append(run)
    finally:  # the folders written for the run
        for _, source, _ in jobs if args.folders else ():
            shutil.rmtree(source, ignore_errors=True)

    training = train_throughput(args.train_steps) if args.train_steps else None
    rss = [r["peak_rss_mib"] for r in runs]
    report = {
        "benchmark": "bench_index",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg())},
        "model": {"label": model_label, "sha256": loaded.sha256, "config": loaded.model.config.to_dict(),
                  "num_features": loaded.model.num_features},
        "batch_size": args.batch_size, "runs": runs, "training": training,
        "rss_growth": round(max(rss) / min(rss) - 1, 4) if len(rss) > 1 else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# bench_index ({report['date_utc']})", "",
        f"Model: {model_label}, {loaded.model.num_features} features, sha256 {loaded.sha256[:12]}. "
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; load average at the end "
        f"{report['machine']['load_average_at_end'][0]:.1f}. Batch {args.batch_size}, "
        f"torch threads {runs[0]['torch_threads']}.", "",
        f"Each source: {args.repeats} index job(s), each between two bare forward passes over the same images; "
        "the ratio is the median over jobs of index images/s against the mean of its two passes (per job: "
        "`ratio_each` in the JSON), the rates are medians. CPU: milliseconds of CPU per image (this process "
        "and the job's decode workers) and their ratio, forward against index (steadier than wall time on a "
        "shared machine).", "",
        "| source | images | objects | skipped | index images/s | bare forward images/s | ratio | ratio of each job "
        "| CPU ms/image index | CPU ms/image forward | CPU ratio | peak RSS MiB | catalog MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['source']} | {r['images']:,} | {r['objects']:,} | {sum(r['skipped'].values()):,} | "
                     f"{r['index_images_per_s']:,.0f} | {r['forward_images_per_s']:,.0f} | {r['ratio']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['ratio_each'])} | {r['index_cpu_ms_per_image']:.2f} | "
                     f"{r['forward_cpu_ms_per_image']:.2f} | {r['cpu_ratio']:.2f} | {r['peak_rss_mib']:,.0f} | "
                     f"{r['catalog_mib']:,.1f} |")
    if training:
        lines += ["", f"Training throughput (`simdex train`'s step, width {training['width']}, "
                  f"{training['image_size']}×{training['image_size']} RGB, batch {training['batch_size']}, median of "
                  f"{training['steps']} steps): " + ", ".join(f"{k} {v:,.1f} images/s"
                                                          for k, v in training["images_per_s"].items())
                  + f"; speed-up after/before {training['speedup']:.2f}×. Decoding and fitting one training "
                  f"image and its mask: {training['decode_cpu_ms_per_image']:.2f} ms of CPU, once per run with "
                  "`--cache-gb` instead of once per epoch."]
    if report["rss_growth"] is not None:
        lines += ["", f"Peak RSS growth from {min(rss):,.0f} to {max(rss):,.0f} MiB: {100 * report['rss_growth']:.1f} %."]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/bench_index.py"
              + (" --untrained" if args.untrained else "")
              + (f" --folders {' '.join(args.folders)} --name {args.name}" if args.folders else "")
              + (f" --train-steps {args.train_steps}" if args.train_steps else "")
              + (f" --source {args.source}" if args.source != "fashion-mnist" and not args.folders else "")
              + (f" --threads {args.threads}" if args.threads else "")
              + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
              + f" --sizes {' '.join(map(str, args.sizes))}`", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
