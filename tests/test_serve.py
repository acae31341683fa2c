"""`simdex serve`'s API in-process (FastAPI TestClient over real HTTP semantics): a tiny catalog indexed
with a real (tiny) model, searched by id, image, box, vector; filters in the SQL sandbox; thumbnails;
SQL; similarity maps; errors as one-line 4xx; a build published under load is picked up with no
failed request."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'simdex[serve]')")
pytest.importorskip("httpx2", reason="httpx2 (the test extra; starlette's TestClient) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from simdex.cli.main import main as cli_main  # noqa: E402
from simdex.engine.build import BuildConfig, build  # noqa: E402
from simdex.engine.catalog import Catalog  # noqa: E402
from simdex.engine.searcher import Searcher  # noqa: E402
from simdex.indexer.checkpoint import save_model  # noqa: E402
from simdex.indexer.runner import IndexOptions, index_source  # noqa: E402
from simdex.serve import CatalogService, create_app  # noqa: E402
from synth import controlled_model  # noqa: E402


def blob(rng, wide: bool, size=28) -> np.ndarray:
    im = np.zeros((size, size), np.uint8)
    w, h = (rng.integers(12, 18), rng.integers(4, 7)) if wide else (rng.integers(4, 7), rng.integers(12, 18))
    x0, y0 = rng.integers(2, size - w - 1), rng.integers(2, size - h - 1)
    im[y0 : y0 + h, x0 : x0 + w] = rng.integers(160, 256)
    return im


def make_image_catalog(root: Path, per_label: int = 12) -> Path:
    """A catalog of `per_label` wide and tall bright rectangles, indexed by a tiny real model, built."""
    model = root / "tiny.pt"
    save_model(controlled_model(), model)
    rng = np.random.default_rng(0)
    for label in ("wide", "tall"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(per_label):
            Image.fromarray(blob(rng, label == "wide")).save(root / "images" / label / f"{i}.png")
    index_source(str(root / "images"), root / "cat", model, IndexOptions(workers=0))
    build(Catalog.open(root / "cat"), BuildConfig(retain=1.0))
    return root / "cat"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    cat = make_image_catalog(tmp_path_factory.mktemp("serve"))
    service = CatalogService.open(cat)
    with TestClient(create_app(service)) as client:
        yield cat, service, client


def source_of(cat: Path, object_id: int) -> str:
    return Searcher.open(cat).metadata([object_id], ["source"]).to_pylist()[0]["source"]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def one_line_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    return detail


def test_info(served):
    cat, service, client = served
    info = client.get("/api/info").json()
    assert info["build"]["version"] == Catalog.open(cat).current_version
    assert info["build"]["objects"] == info["catalog"]["objects"] == 24
    assert {"uniform", "svd", info["build"]["omega"]} <= set(info["build"]["omegas"])
    assert info["model"]["loaded"] and info["model"]["image_size"] == 32
    assert "label" in info["columns"] and "features" not in info["columns"]


def test_search_by_id_ranks_itself_first_with_p_1_and_explains(served):
    cat, _, client = served
    r = client.post("/api/search", json={"ids": [5], "k": 6, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["results"]
    assert len(res) == 6 and [x["rank"] for x in res] == list(range(1, 7))
    assert res[0]["object_id"] == 5 and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(res, res[1:]))
    for x in res:  # metadata and the per-layer parts of P, which add up to P
        assert x["label"] in ("wide", "tall") and x["source"].endswith(".png")
        assert sum(x["layers"].values()) == pytest.approx(x["score"], abs=1e-5)
    assert sum(body["layer_most"].values()) == pytest.approx(1.0, abs=1e-6)
    # the same ranking as the library, and as the GET form
    lib = Searcher.open(cat).search(ids=[5], k=6).to_pylist()
    assert [x["object_id"] for x in res] == [x["object_id"] for x in lib]
    got = client.get("/api/search", params={"ids": 5, "k": 6}).json()["results"]
    assert [x["object_id"] for x in got] == [x["object_id"] for x in lib]


def test_search_options_reach_the_engine(served):
    cat, _, client = served
    s = Searcher.open(cat)
    for opts in ({"membership": "max", "ids": [1, 2]}, {"omega": "uniform", "exact": True, "ids": [3]},
                 {"tau": 0.5, "ids": [4]}, {"membership": "triangle", "ids": [1, 2, 3]}):
        body = {"k": 5, **opts}
        got = client.post("/api/search", json=body).json()["results"]
        want = s.search(ids=opts["ids"], k=5, membership=opts.get("membership", "auto"), tau=opts.get("tau"),
                        omega=opts.get("omega"), exact=opts.get("exact", False)).to_pylist()
        assert [(x["object_id"], round(x["score"], 5)) for x in got] == \
               [(x["object_id"], round(x["score"], 5)) for x in want], opts


def test_where_filter_runs_in_the_sql_sandbox(served):
    _, _, client = served
    res = client.post("/api/search", json={"ids": [0], "k": 30, "where": "label = 'tall'"}).json()["results"]
    assert len(res) == 12 and {x["label"] for x in res} == {"tall"}
    detail = one_line_error(client.post("/api/search", json={"ids": [0], "where": "nosuchcolumn = 1"}), 400)
    assert "nosuchcolumn" in detail
    # reading a file from a filter is refused by the sandbox, as in `simdex sql`
    detail = one_line_error(client.post("/api/search", json={
        "ids": [0], "where": "label IN (SELECT * FROM read_csv('/etc/passwd'))"}), 400)
    assert "refused" in detail or "disabled" in detail
    one_line_error(client.post("/api/search", json={"ids": [0], "where": "1=1; DROP VIEW objects"}), 400)


def test_search_by_uploaded_image_finds_that_image(served):
    cat, _, client = served
    source = source_of(cat, 17)
    data = Path(source).read_bytes()
    r = client.post("/api/search/image", files={"image": ("q.png", data, "image/png")}, data={"k": "4",
                                                                                           "explain": "true"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["object_id"] == 17 and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(res) == 4 and "layers" in res[0]
    # the same answer as the CLI's query by image
    out = CliRunner().invoke(cli_main, ["query", "--catalog", str(cat), "--image", source, "-k", "4",
                                        "--format", "json"])
    assert out.exit_code == 0, out.output
    assert [__import__("json").loads(line)["object_id"] for line in out.output.splitlines()] == \
           [x["object_id"] for x in res]


def test_search_by_box_and_by_two_images(served):
    cat, _, client = served
    with Image.open(source_of(cat, 2)) as f:
        im = np.asarray(f)
    ys, xs = np.nonzero(im)
    whole = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    r = client.post("/api/search/image", files={"image": ("q.png", png_bytes(im), "image/png")},
                    data={"k": "3", "box": whole})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["object_id"] == 2 and r.json()["query"]["boxes"] == [whole]
    one_line_error(client.post("/api/search/image", files={"image": ("q.png", png_bytes(im), "image/png")},
                               data={"box": "0,0,99,99"}), 400)
    one_line_error(client.post("/api/search/image", files={"image": ("q.png", png_bytes(im), "image/png")},
                               data={"box": "a,b"}), 400)
    two = [("image", ("a.png", Path(source_of(cat, 0)).read_bytes(), "image/png")),
           ("image", ("b.png", Path(source_of(cat, 1)).read_bytes(), "image/png"))]
    r = client.post("/api/search/image", files=two, data={"k": "2"})
    assert r.status_code == 200 and {x["object_id"] for x in r.json()["results"]} == {0, 1}
    assert r.json()["query"]["membership"] == "auto"


def test_search_by_feature_vector(served):
    cat, _, client = served
    x = next(b for ids, b in Catalog.open(cat).iter_features() if True)[9]  # object 9's raw vector
    r = client.post("/api/search", json={"features": [x.tolist()], "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["object_id"] == 9
    assert "values" in one_line_error(client.post("/api/search", json={"features": [[1.0, 2.0]]}), 400)


def test_bad_requests_get_one_line_4xx(served):
    _, _, client = served
    assert "no object 999" in one_line_error(client.post("/api/search", json={"ids": [999]}), 404)
    one_line_error(client.post("/api/search", json={"ids": [1], "k": 0}), 422)
    one_line_error(client.post("/api/search", json={"ids": "x"}), 422)
    one_line_error(client.post("/api/search", json={}), 400)
    one_line_error(client.post("/api/search", json={"ids": [1], "membership": "fuzzy"}), 400)
    assert "uniform" in one_line_error(client.post("/api/search", json={"ids": [1], "omega": "nope"}), 400)
    one_line_error(client.post("/api/search", json={"ids": [1], "tau": -1}), 422)
    detail = one_line_error(client.post("/api/search/image", files={"image": ("x.png", b"not an image", "image/png")}),
                            400)
    assert "not_an_image" in detail or "cannot read" in detail
    one_line_error(client.post("/api/search/image", data={"k": "3"}), 422)
    one_line_error(client.post("/api/search", content=b"{", headers={"content-type": "application/json"}), 422)
    huge = 10**22  # beyond int64: a 4xx, never a 500
    assert "not an object id" in one_line_error(client.post("/api/search", json={"ids": [huge]}), 400)
    one_line_error(client.get("/api/search", params={"ids": huge}), 400)
    one_line_error(client.get(f"/api/objects/{huge}"), 404)
    one_line_error(client.get(f"/api/objects/{huge}/thumbnail"), 404)


def test_thumbnails_by_object_id_only(served):
    cat, _, client = served
    r = client.get("/api/objects/3/thumbnail", params={"size": 56})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert max(im.size) == 56 and np.asarray(im).std() > 0
    assert client.get("/api/objects/3").json()["object_id"] == 3
    one_line_error(client.get("/api/objects/999/thumbnail"), 404)
    one_line_error(client.get("/api/objects/-1"), 404)
    for bad in ("/api/objects/..%2F..%2Fetc%2Fpasswd/thumbnail", "/api/objects/%2Fetc%2Fpasswd/thumbnail",
                "/static/..%2F..%2Fservice.py", "/static/../service.py"):
        r = client.get(bad)
        assert r.status_code in (404, 422) and b"import" not in r.content, bad


def test_sql_endpoint_is_the_sandboxed_session(served, tmp_path):
    _, _, client = served
    r = client.post("/api/sql", json={"statement": "SELECT label, count(*) AS n FROM objects GROUP BY 1 ORDER BY 1"})
    assert r.status_code == 200, r.text
    assert r.json()["columns"] == ["label", "n"] and r.json()["rows"] == [["tall", 12], ["wide", 12]]
    r = client.post("/api/sql", json={"statement": "SELECT object_id FROM objects ORDER BY 1", "max_rows": 5})
    assert r.json()["truncated"] and len(r.json()["rows"]) == 5
    target = tmp_path / "stolen.csv"
    for statement in (f"COPY (SELECT * FROM objects) TO '{target}'", "SELECT * FROM read_csv('/etc/passwd')",
                      "SET enable_external_access = true", "INSTALL httpfs"):
        one_line_error(client.post("/api/sql", json={"statement": statement}), 400)
    assert not target.exists()
    one_line_error(client.post("/api/sql", json={"statement": "SELEC 1"}), 400)


def test_similarity_map(served):
    _, _, client = served
    r = client.get("/api/explain", params={"query": 0, "answer": 4})
    assert r.status_code == 200, r.text
    e = r.json()
    p = client.post("/api/search", json={"ids": [0], "k": 24, "exact": True}).json()["results"]
    assert e["P"] == pytest.approx(next(x["score"] for x in p if x["object_id"] == 4), abs=1e-5)
    for im in e["images"]:
        assert im["map_sum"] == pytest.approx(e["P"], abs=1e-4)
    png = client.get("/api/explain.png", params={"query": 0, "answer": 4})
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size[0] > 100
    one_line_error(client.get("/api/explain", params={"query": 0, "answer": 999}), 404)


def test_page_docs_and_openapi(served):
    _, _, client = served
    page = client.get("/")
    assert page.status_code == 200 and "<title>simdex</title>" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: every asset from this server
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/sql", "/api/info", "/api/objects/{object_id}/thumbnail",
            "/api/explain"} <= set(paths)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_a_new_build_is_picked_up_under_load_without_a_failed_request(tmp_path):
    cat = make_image_catalog(tmp_path, per_label=6)
    service = CatalogService.open(cat, load_model=False)
    client = TestClient(create_app(service))
    first = client.get("/api/info").json()["build"]["version"]
    statuses, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            r = client.post("/api/search", json={"ids": [1], "k": 3, "where": "label = 'wide'"})
            statuses.append((r.status_code, r.json()["version"] if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        second = build(Catalog.open(cat), BuildConfig(retain=1.0, omega="uniform")).version
        third = build(Catalog.open(cat), BuildConfig(retain=1.0)).version  # two publications in a row
        deadline = time.time() + 20
        while time.time() < deadline and client.get("/api/info").json()["build"]["version"] != third:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert client.get("/api/info").json()["build"]["version"] == third != second != first
    assert statuses and all(code == 200 for code, _ in statuses), [s for s in statuses if s[0] != 200][:3]
    assert {v for _, v in statuses} <= {first, second, third} and statuses[-1][1] == third
    # queries by image are off without the model: a 503 that says so
    assert "off" in one_line_error(client.post("/api/search/image", files={"image": ("x.png", b"x", "image/png")}), 503)


def test_cli_errors_are_one_line(tmp_path):
    import socket

    Catalog.create(tmp_path / "empty", {"sha256": "0" * 64, "config": {}, "phi": [{"name": "C11", "channels": 2,
                                        "stride": 1, "offset": 0}], "num_features": 2, "region": "bbox"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = CliRunner().invoke(cli_main, ["serve", "--catalog", str(tmp_path / "empty"), "--port", str(port)])
        assert out.exit_code == 1 and "cannot listen on 127.0.0.1" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(cli_main, ["serve", "--catalog", str(tmp_path / "empty"), "--port", str(port)])
    assert out.exit_code == 1 and "no build yet" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(cli_main, ["serve", "--catalog", str(tmp_path / "nothing"), "--port", str(port)])
    assert out.exit_code == 1 and "Error:" in out.output and "Traceback" not in out.output


def test_deleted_objects_disappear_without_a_restart(tmp_path):
    cat = make_image_catalog(tmp_path, per_label=4)
    client = TestClient(create_app(CatalogService.open(cat, load_model=False)))
    assert client.post("/api/search", json={"ids": [2], "k": 1}).json()["results"][0]["object_id"] == 2
    out = CliRunner().invoke(cli_main, ["delete", "--catalog", str(cat), "3"])
    assert out.exit_code == 0, out.output
    deadline = time.time() + 20
    while time.time() < deadline:
        ids = [r["object_id"] for r in client.post("/api/search", json={"ids": [2], "k": 8}).json()["results"]]
        if 3 not in ids:
            break
        time.sleep(0.05)
    assert 3 not in ids and len(ids) == 7
    assert client.get("/api/info").json()["catalog"]["deleted"] == 1


def test_simdex_serve_process_answers_on_localhost(served):
    import http.client
    import json
    import socket
    import subprocess
    import sys

    cat, _, _ = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with subprocess.Popen([str(Path(sys.executable).with_name("simdex")), "serve", "--catalog", str(cat),
                           "--port", str(port), "--no-model"], stderr=subprocess.PIPE, text=True) as proc:
        deadline, info = time.time() + 60, None
        while time.time() < deadline and info is None and proc.poll() is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/api/info")
                info = json.loads(conn.getresponse().read())
            except OSError:
                time.sleep(0.1)
            finally:
                conn.close()
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert info is not None, err
    assert info["build"]["objects"] == 24 and not info["model"]["loaded"]
    assert f"at http://127.0.0.1:{port}/" in err  # localhost unless told otherwise


def test_a_broken_new_build_is_refused_and_the_old_one_still_answers(tmp_path):
    cat = make_image_catalog(tmp_path, per_label=4)
    service = CatalogService.open(cat, load_model=False)
    client = TestClient(create_app(service))
    good = client.get("/api/info").json()["build"]["version"]
    catalog = Catalog.open(cat)
    broken = catalog.new_build_dir()
    (broken / "build.json").write_text("{}")  # a build with nothing else in it
    bad = catalog.publish_build(broken)
    assert service.reload() == good  # the load fails: the service keeps the build it had
    for _ in range(3):
        r = client.post("/api/search", json={"ids": [1], "k": 2})
        assert r.status_code == 200 and r.json()["version"] == good
    fixed = build(catalog, BuildConfig(retain=1.0)).version
    assert service.reload() == fixed != bad
