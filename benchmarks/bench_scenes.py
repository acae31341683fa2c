"""The scenes benchmark end to end: segmentation quality of a model, retrieval quality of its
catalog where layout and pose vary, and the detection rate of `--objects all`.

Steps (each a `simdex` command, so every figure can be reproduced by hand):

1. `simdex model-info --evaluate` on the scenes test split, Fashion-MNIST test, and
   Fashion-MNIST test inverted (white background): Dice and R_sp^0.
2. for each region mode (`--regions`, default bbox and mask): the first `--train-images`
   training scenes (2,000 items × 4 copies) and every test scene into a new catalog,
   `simdex build`.
3. `simdex eval` twice on that build, every query of the test split:
   - instance: the first copy of each held-out item (split `query`) against its other
     copies (split `gallery`), relevant = same item (`--label-column instance`);
   - class: the same queries against the training scenes (other items), relevant = same class;
   the build is `simdex build` with its defaults: Ω fitted to the training split's classes
   (`label`, the build's Ω) and, separately, to its items (`instance`, what
   `simdex query --omega instance` uses); `simdex eval --label-column instance` ranks with
   the latter.
4. `simdex index fashion-mnist-scenes:test --objects all` into a second catalog; each
   ground-truth object of a scene (the compositing mask) counts as detected when an
   object row of its image has a box of IoU ≥ 0.5 with the object's box; a row matches
   its item when the mask's majority inside the row's box is that item.

Needs the benchmark's images: `simdex scenes --out data/scenes` (or $SIMDEX_SCENES).

Run (from the repository root; about 20–30 minutes on 2 cores with the shipped model):

    .venv/bin/python benchmarks/bench_scenes.py                    # shipped model
    .venv/bin/python benchmarks/bench_scenes.py --model runs/x/model.pt --tag x

Writes benchmarks/results/bench_scenes[_TAG].json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SIMDEX = [sys.executable, "-m", "simdex.cli.main"]
SEG_SOURCES = ("fashion-mnist-scenes:test", "fashion-mnist:test", "fashion-mnist:test:inverted")


def sh(args: list[str], log: list[dict]) -> str:
    t = time.perf_counter()
    out = subprocess.run(SIMDEX + args, capture_output=True, text=True)
    log.append({"command": "simdex " + " ".join(args), "seconds": round(time.perf_counter() - t, 1)})
    if out.returncode:
        raise SystemExit(f"simdex {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    print(f"  simdex {' '.join(args)}  ({log[-1]['seconds']} s)", flush=True)
    return out.stdout


def iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def detection(catalog: Path, scenes: Path) -> dict:
    """Detection rate and item match of an `--objects all` catalog of the test scenes."""
    from PIL import Image

    from simdex.engine.catalog import Catalog

    t = Catalog.open(catalog).read_objects(["source", "x0", "y0", "x1", "y1"]).to_pylist()
    rows_of: dict[str, list] = {}
    for r in t:
        rows_of.setdefault(os.path.realpath(r["source"]), []).append((r["x0"], r["y0"], r["x1"], r["y1"]))
    with open(scenes / "test.csv", newline="") as f:
        scene_rows = list(csv.DictReader(f))
    gt_total = gt_found = rows_total = rows_matched = 0
    by_count: dict[int, list[int]] = {}
    for s in scene_rows:
        mask = np.asarray(Image.open(scenes / s["mask"]))
        boxes = rows_of.get(os.path.realpath(scenes / s["path"]), [])
        ids = [int(v) for v in np.unique(mask) if v]
        gt = {}
        for k in ids:
            ys, xs = np.nonzero(mask == k)
            gt[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        found = sum(any(iou(g, b) >= 0.5 for b in boxes) for g in gt.values())
        gt_total, gt_found = gt_total + len(gt), gt_found + found
        by_count.setdefault(len(ids), [0, 0])
        by_count[len(ids)][0] += len(gt)
        by_count[len(ids)][1] += found
        for b in boxes:
            rows_total += 1
            window = mask[b[1]:b[3], b[0]:b[2]]
            vals, counts = np.unique(window[window > 0], return_counts=True)
            if len(vals) and iou(gt[int(vals[np.argmax(counts)])], b) >= 0.5:
                rows_matched += 1
    return {"scenes": len(scene_rows), "objects_in_scenes": gt_total, "detected": gt_found,
            "detection_rate": round(gt_found / max(gt_total, 1), 4), "object_rows": rows_total,
            "rows_matching_their_item": round(rows_matched / max(rows_total, 1), 4),
            "detection_rate_by_objects_per_scene": {str(k): round(v[1] / max(v[0], 1), 4)
                                                    for k, v in sorted(by_count.items())}}


def markdown(res: dict) -> str:
    lines = [f"# bench_scenes{(' ' + res['tag']) if res['tag'] else ''} ({res['date']})", "",
             f"Model: {res['model']} (sha256 {res['model_sha256'][:12]}). Machine: {res['machine']}.", ""]
    lines += ["## Segmentation (`simdex model-info --evaluate`)", "",
              "| source | images | Dice | R_sp^0 |", "|---|---:|---:|---:|"] if res["segmentation"] else [
              "Segmentation not measured (`--no-segmentation`)."]
    for name, e in res["segmentation"].items():
        lines.append(f"| {name} | {e['images']:,} | {e['dice']:.4f} | {e['r_sp0']:.3f} |")
    for region, by_kind in res["retrieval"].items():
        for kind in ("instance", "class"):
            ev = by_kind[kind]
            lines += ["", f"## Retrieval, `--region {region}`, {kind} labels, default build ({ev['queries']:,} queries vs "
                      f"{ev['gallery']:,} gallery objects; build's Ω: {ev['build_omega']})", "",
                      f"`{ev['command']}`", "", "| ranking | P@1 | P@10 | mAP |", "|---|---:|---:|---:|"]
            for method, m in ev["results"].items():
                lines.append(f"| {method} | {m['p@1']:.3f} | {m['p@10']:.3f} | {m['map']:.3f} |")
    d = res["detection"]
    lines += ["", "## Multi-object scenes (`--objects all` on the test scenes)", "",
              f"{d['objects_in_scenes']:,} objects in {d['scenes']:,} scenes: detection rate "
              f"**{d['detection_rate']:.3f}** (IoU ≥ 0.5); {d['object_rows']:,} object rows, "
              f"{d['rows_matching_their_item']:.3f} of them match their item. By objects per scene: " +
              ", ".join(f"{k}: {v:.3f}" for k, v in d["detection_rate_by_objects_per_scene"].items()) + ".",
              "", "## Commands", ""]
    lines += [f"- `{c['command']}` ({c['seconds']} s)" for c in res["commands"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--work", default=None, help="folder for the catalogs (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the catalogs")
    ap.add_argument("--reuse", action="store_true", help="with --work: go on with the catalogs a run left there")
    ap.add_argument("--regions", nargs="+", default=["bbox", "mask"], help="region modes to compare")
    ap.add_argument("--no-segmentation", action="store_true",
                    help="skip the model's Dice and R_sp^0 (three `model-info --evaluate` runs): retrieval only")
    ap.add_argument("--train-images", type=int, default=8000,
                    help="first N training scenes as the class gallery (0 = all 30,000); test scenes: all")
    args = ap.parse_args()
    from simdex.indexer.checkpoint import load_model
    from simdex.indexer.sources import find_scenes

    scenes = find_scenes()
    lm = load_model(args.model)
    model = ["--model", str(args.model)] if args.model else []
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scenes_"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    res = {"tag": args.tag, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "model": str(args.model or "shipped default (indexer/models/default.pt)"), "model_sha256": lm.sha256,
           "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "segmentation": {}, "retrieval": {}}
    for src in SEG_SOURCES if not args.no_segmentation else ():
        info = json.loads(sh(["model-info", *model, "--evaluate", src, "--json"], log))
        res["segmentation"][src] = {k: info["evaluation"][k] for k in ("images", "dice", "r_sp0", "task_loss")}
    for region in args.regions:
        cat = work / f"scenes-{region}"
        limit = ["--limit", str(args.train_images)] if args.train_images else []
        if not args.reuse:
            shutil.rmtree(cat, ignore_errors=True)
        # a finished index job does nothing again, and an up-to-date build is rebuilt in seconds
        sh(["index", str(scenes / "train.csv"), "--catalog", str(cat), "--region", region, *limit, *model,
            "--quiet"], log)
        sh(["index", str(scenes / "test.csv"), "--catalog", str(cat), *model, "--quiet"], log)
        build_out = sh(["build", "--catalog", str(cat)], log)
        res["retrieval"][region] = {"build": [line for line in build_out.splitlines() if line.startswith("Ω")]}
        for kind, opts in (("instance", ["--label-column", "instance", "--gallery-split", "gallery"]),
                           ("class", ["--label-column", "label", "--gallery-split", "train"])):
            cmd = ["eval", "--catalog", str(cat), "--query-split", "query", "--queries", "0", *opts]
            ev = json.loads(sh([*cmd, "--format", "json", "--quiet"], log))
            res["retrieval"][region][kind] = {"command": "simdex " + " ".join(cmd).replace(str(cat), "CATALOG"),
                                              "queries": ev["queries"], "gallery": ev["gallery"],
                                              "build_omega": ev.get("build_omega"), "results": ev["results"]}
    multi = work / "scenes_all"
    if not args.reuse:
        shutil.rmtree(multi, ignore_errors=True)
    sh(["index", "fashion-mnist-scenes:test", "--catalog", str(multi), "--objects", "all", *model, "--quiet"], log)
    res["detection"] = detection(multi, scenes)
    res["commands"] = [{**c, "command": c["command"].replace(str(work), "WORK")} for c in log]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench_scenes" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
