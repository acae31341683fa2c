"""Self-supervised Ω on the scenes benchmark: a catalog whose training images carry no labels.

Steps (`simdex` commands):

1. copies of the scenes' image lists without their `label` column (the training split's
   `instance` column is dropped too; the test split keeps it to judge relevance);
2. `simdex index` of the first --train-images training scenes with `--views N` (a seeded sample
   of N of them run through the model twice more in a random pose and colour), then every test
   scene (no views);
3. `simdex build --omega-columns none`: no labels, so Ω is learned from the views and kept
   when it beats uniform Ω on held-out views;
4. `simdex eval --label-column instance`: each held-out item's query copy against its other
   copies, the build's Ω (from the views) beside uniform Ω, L2 of z-scores, cosine and pixels.

Needs the benchmark's images: `simdex scenes --out data/scenes` (or $SIMDEX_SCENES).

    .venv/bin/python benchmarks/bench_views.py            # ≈ 6 min on 2 cores

Writes benchmarks/results/bench_views.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIMDEX = str(Path(sys.executable).with_name("simdex"))


def sh(args: list[str], log: list[dict]) -> str:
    t = time.perf_counter()
    out = subprocess.run([SIMDEX, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"simdex {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    log.append({"command": "simdex " + " ".join(args), "seconds": round(time.perf_counter() - t, 1)})
    print(f"  {log[-1]['command']}  ({log[-1]['seconds']} s)", flush=True)
    return out.stdout


def strip_labels(src: Path, dest: Path, drop: tuple[str, ...]) -> None:
    """A copy of an image list without the columns `drop`, its paths made absolute."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [c for c in rows[0] if c not in drop]
    with open(dest, "w", newline="") as f:
        w = csv.DictWriter(f, keep)
        w.writeheader()
        for r in rows:
            out = {c: r[c] for c in keep}
            for c in ("path", "mask"):
                if c in out and out[c] and not Path(out[c]).is_absolute():
                    out[c] = str((src.parent / out[c]).resolve())
            w.writerow(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-images", type=int, default=8000)
    ap.add_argument("--views", type=int, default=2000)
    ap.add_argument("--work", default=None, help="folder for the catalog (default: a temporary one)")
    args = ap.parse_args()
    from simdex.indexer.sources import find_scenes

    scenes = find_scenes()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_views_"))
    shutil.rmtree(work / "catalog", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    strip_labels(scenes / "train.csv", work / "train.csv", ("label", "instance"))
    strip_labels(scenes / "test.csv", work / "test.csv", ("label",))
    cat = work / "catalog"
    log: list[dict] = []
    sh(["index", str(work / "train.csv"), "--catalog", str(cat), "--limit", str(args.train_images),
        "--views", str(args.views), "--quiet"], log)
    sh(["index", str(work / "test.csv"), "--catalog", str(cat), "--views", "0", "--quiet"], log)
    build_out = sh(["build", "--catalog", str(cat), "--omega-columns", "none"], log)
    cmd = ["eval", "--catalog", str(cat), "--query-split", "query", "--gallery-split", "gallery", "--queries", "0",
           "--label-column", "instance"]
    ev = json.loads(sh([*cmd, "--format", "json", "--quiet"], log))
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
           "train_images": args.train_images, "views": args.views,
           "build": [line for line in build_out.splitlines() if line.startswith(("Ω", "learned"))],
           "eval": ev, "commands": [{**c, "command": c["command"].replace(str(work), "WORK")} for c in log]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_views.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# bench_views ({res['date']})", "",
             f"Scenes without labels: the first {args.train_images:,} training scenes (no `label`, no `instance`), "
             f"{args.views:,} of them also as augmented views, and the test scenes; "
             f"{ev['queries']:,} held-out items' query copies against {ev['gallery']:,} other copies "
             f"(relevant = same item; the build never sees these labels). Build's Ω: {ev['build_omega']}.", "",
             "Build:", "", *[f"    {line}" for line in res["build"]], "",
             f"`{' '.join(['simdex', *cmd]).replace(str(work), 'WORK')}`", "",
             "| ranking | P@1 | P@10 | mAP |", "|---|---:|---:|---:|"]
    for method, m in ev["results"].items():
        lines.append(f"| {method} | {m['p@1']:.3f} | {m['p@10']:.3f} | {m['map']:.3f} |")
    lines += ["", "Commands:", ""] + [f"- `{c['command']}` ({c['seconds']} s)" for c in res["commands"]]
    (RESULTS / "bench_views.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
