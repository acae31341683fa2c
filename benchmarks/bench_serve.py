"""Load test of `simdex serve`: concurrent clients on localhost, a new build published mid-run.

How to run (from the repository root; ≈ 10 min on 2 cores the first time, catalogs kept with --keep):

    .venv/bin/python benchmarks/bench_serve.py                          # 70k (Fashion-MNIST) and 1M objects
    .venv/bin/python benchmarks/bench_serve.py --sizes 70000 --seconds 10   # quicker

Writes benchmarks/results/bench_serve.json and .md.

Per catalog, the real `simdex serve --catalog DIR` process (uvicorn, the catalog's model and
build loaded once) takes two phases of --seconds each from --clients concurrent clients
(threads of one client process, one keep-alive HTTP connection each, as fast as answers
come): search by object id (random ids, k = 10), then search by uploaded 64×64 PNG image
(k = 10). In the middle of each phase a new build is published; every answer says which
build answered it, so the swap is seen, and every request must succeed (0 errors).

- 70,000 objects: Fashion-MNIST indexed with the shipped model (`simdex index fashion-mnist`,
  `simdex build`); query images are test images scaled to 64×64; the mid-run build is a real
  `simdex build` process (so it also competes for the cores).
- 1,000,000 objects: benchmarks/bench_cli_query.py's synthetic catalog (bench_query.py's
  generator: sparse, skewed, correlated, 10 classes; 680 real, 100 never active and 20 faint
  features) laid out as the shipped model's 800 features and written as `simdex index` writes
  shards, then `simdex build` (≈ 450 kept features, as in bench_query and bench_cli_query); the
  catalog records the shipped model, so a query by image runs the real model and searches the 1M
  build. The mid-run build is the current one published again under a
  new version (hard links): the service reloads everything as for any new build, without the
  ≈ 2 min a real 1M rebuild would take inside a 60 s window.

Measured per phase: requests, errors, throughput, latency seen by the client (p50/p90/p99: HTTP,
multipart, JSON included), inside the server (the answer's `took_ms`: computing the answer, for
images decoding and the model too) and waiting in the server for a worker (`queue_ms`; the
service computes one search per core at a time), the builds that answered and how long after a publication the
first answer came from the new build.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli_query import write_catalog  # noqa: E402

from simdex.engine.catalog import Catalog  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIMDEX = str(Path(sys.executable).with_name("simdex"))
K = 10


# ----------------------------------------------------------------------------- catalogs

def fashion_catalog(root: Path) -> Catalog:
    """All 70,000 Fashion-MNIST images indexed with the shipped model, built."""
    if not (root / "catalog.json").exists() or Catalog.open(root).current_version is None:
        run([SIMDEX, "index", "fashion-mnist", "--catalog", str(root)])
        run([SIMDEX, "build", "--catalog", str(root)])
    return Catalog.open(root)


def synthetic_catalog(root: Path, n_objects: int) -> Catalog:
    """bench_cli_query.py's synthetic catalog laid out as the shipped model's φ and recorded as made by it
    (so a query by image runs that model), built."""
    if (root / "catalog.json").exists() and Catalog.open(root).current_version is not None:
        return Catalog.open(root)
    if root.exists():
        shutil.rmtree(root)
    from simdex.indexer.checkpoint import load_model
    from simdex.indexer.runner import model_info

    write_catalog(root, n_objects, info=model_info(load_model(None), "bbox"))
    run([SIMDEX, "build", "--catalog", str(root)])
    return Catalog.open(root)


def republish(cat: Catalog) -> str:
    """Publish the current build again under a new version (hard links): a new build for the service."""
    tmp = cat.new_build_dir()
    for p in cat.current_build_dir().iterdir():
        os.link(p, tmp / p.name) if p.is_file() else shutil.copytree(p, tmp / p.name, copy_function=os.link)
    return cat.publish_build(tmp)


def query_images(n: int = 64) -> list[bytes]:
    """n Fashion-MNIST test images scaled to 64×64, as PNG bytes."""
    from PIL import Image

    from simdex.indexer.sources import find_fashion_mnist, read_idx

    folder = find_fashion_mnist()
    path = next(p for p in folder.iterdir() if p.name.startswith("t10k-images"))
    out = []
    for im in read_idx(path)[:n]:
        buf = io.BytesIO()
        Image.fromarray(im).resize((64, 64), Image.BILINEAR).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


# ----------------------------------------------------------------------------- the server and its clients

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, int, float]:
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([SIMDEX, "serve", "--catalog", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simdex serve exited: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/info")
            if conn.getresponse().status == 200:
                return proc, port, time.perf_counter() - t
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("simdex serve did not start in 300 s")


def multipart(image: bytes, fields: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def client(port: int, kind: str, n_objects: int, images: list[bytes], seed: int, stop: threading.Event,
           records: list) -> None:
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        if kind == "id":
            body = json.dumps({"ids": [int(rng.integers(n_objects))], "k": K}).encode()
            path, ctype = "/api/search", "application/json"
        else:
            body, ctype = multipart(images[int(rng.integers(len(images)))], {"k": K})
            path = "/api/search/image"
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            data = resp.read()
            latency = time.perf_counter() - t0
            if resp.status == 200:
                answer = json.loads(data)
                ok = len(answer["results"]) == K
                records.append((t0, latency, ok, answer["took_ms"], answer["version"],
                                None if ok else f"{len(answer['results'])} results", answer["queue_ms"]))
            else:
                records.append((t0, latency, False, None, None, f"HTTP {resp.status}: {data[:200]!r}", None))
        except (OSError, http.client.HTTPException) as exc:
            records.append((t0, time.perf_counter() - t0, False, None, None, f"{type(exc).__name__}: {exc}", None))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def phase(port: int, kind: str, seconds: float, clients: int, cat: Catalog, images: list[bytes], publish) -> dict:
    """`clients` threads for `seconds`; `publish()` runs at half time. The first second is warm-up (discarded)."""
    n_objects = cat.num_objects
    stop = threading.Event()
    records: list = []
    threads = [threading.Thread(target=client, args=(port, kind, n_objects, images, i, stop, records))
               for i in range(clients)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    t_pub = time.perf_counter()
    new_version = publish()
    t_done = time.perf_counter()
    # the moment CURRENT changed (`simdex build` goes on a little after publishing), on this clock
    t_published = t_done - (time.time() - os.stat(cat.root / "CURRENT").st_mtime)
    time.sleep(max(0.0, seconds - (t_done - t_start)))
    stop.set()
    for t in threads:
        t.join()
    t_end = time.perf_counter()
    kept = [r for r in records if r[0] >= t_start + 1.0]
    lat = np.array([r[1] for r in kept]) * 1000
    took = np.array([r[3] for r in kept if r[3] is not None])
    queue = np.array([r[6] for r in kept if r[6] is not None])
    errors = [r for r in records if not r[2]]
    versions = [r[4] for r in sorted(records) if r[4]]
    first_new = next((r[0] + r[1] for r in sorted(records) if r[4] == new_version), None)
    pct = (lambda a, q: float(np.percentile(a, q)) if len(a) else None)  # noqa: E731
    return {
        "kind": kind, "clients": clients, "seconds": round(t_end - t_start, 1), "requests": len(records),
        "errors": len(errors), "error_examples": sorted({e[5] for e in errors})[:5],
        "throughput_per_s": round(len(kept) / (t_end - t_start - 1.0), 1),
        "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": pct(lat, 100)},
        "server_ms": {"p50": pct(took, 50), "p90": pct(took, 90), "p99": pct(took, 99)},
        "queue_ms": {"p50": pct(queue, 50), "p99": pct(queue, 99)},
        "builds": {"before": versions[0] if versions else None, "published": new_version,
                   "answers_from_new": sum(v == new_version for v in versions),
                   "publish_s": round(t_published - t_pub, 2),  # from the start of the publication to CURRENT's swap
                   "new_build_first_answer_after_publish_s": None if first_new is None
                   else round(first_new - t_published, 2)},
    }


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[70_000, 1_000_000],
                        help="70000 = Fashion-MNIST (real); any other size = synthetic")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=25.0, help="per phase (id, image); two phases per size")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the catalogs in --workdir for another run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="simdex-bench-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    images = query_images()
    rows = []
    try:
        for size in args.sizes:
            t = time.perf_counter()
            if size == 70_000:
                root = workdir / "fmnist"
                cat = fashion_catalog(root)

                def publish(cat=cat, root=root):
                    run([SIMDEX, "build", "--catalog", str(root)])
                    return cat.current_version
                how = "simdex build (a real rebuild, in its own process)"
            else:
                root = workdir / f"synthetic-{size}"
                cat = synthetic_catalog(root, size)

                def publish(cat=cat):
                    return republish(cat)
                how = "the current build published again under a new version (hard links)"
            prepare_s = time.perf_counter() - t
            print(f"catalog {root}: {cat.num_objects:,} objects (ready in {prepare_s:.0f} s)", flush=True)
            proc, port, start_s = start_server(root)
            try:
                load1 = os.getloadavg()
                for kind in ("id", "image"):
                    res = phase(port, kind, args.seconds, args.clients, cat, images, publish)
                    res.update({"objects": cat.num_objects, "catalog": "fashion-mnist" if size == 70_000 else "synthetic",
                                "publish": how, "server_start_s": round(start_s, 1), "loadavg_before": load1})
                    rows.append(res)
                    print(json.dumps(res), flush=True)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    doc = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "loadavg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "note": "shared machine: other jobs ran at the same time (see loadavg)"},
        "command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "k": K, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serve.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "bench_serve.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    def f(v, nd=1):
        return "–" if v is None else f"{v:.{nd}f}"

    lines = [f"# simdex serve under load ({doc['machine']['date']})", "",
             f"`{doc['command']}` on {doc['machine']['cpus']} cores ({doc['machine']['note']}; load average "
             f"after: {', '.join(f'{x:.1f}' for x in doc['machine']['loadavg_after'])}). k = {doc['k']}; the "
             "first second of each phase is discarded; latency = seen by the client; in server = the answer's "
             "took_ms (computing the answer: for images decoding and the model too); queue = the answer's queue_ms "
             "(waiting for one of the server's workers, one per core).", "",
             "| objects | search by | clients | requests | errors | req/s | latency p50 ms | p90 ms | p99 ms |"
             " in server p50 ms | p99 ms | queue p50 ms | builds answering | new build's first answer after publish |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in doc["rows"]:
        b = r["builds"]
        lines.append(
            f"| {r['objects']:,} | {r['kind']} | {r['clients']} | {r['requests']:,} | {r['errors']} | "
            f"{r['throughput_per_s']:.0f} | {f(r['latency_ms']['p50'])} | {f(r['latency_ms']['p90'])} | "
            f"{f(r['latency_ms']['p99'])} | {f(r['server_ms']['p50'], 2)} | {f(r['server_ms']['p99'], 2)} | "
            f"{f(r['queue_ms']['p50'])} | "
            f"{b['before']} → {b['published']} ({b['answers_from_new']:,} answers) | "
            f"{f(b['new_build_first_answer_after_publish_s'], 2)} s |")
    lines += ["", "Mid-run publication: " + "; ".join(sorted({f"{r['objects']:,}: {r['publish']}" for r in doc['rows']}))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
