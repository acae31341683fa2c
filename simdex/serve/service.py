"""What `simdex serve` answers, without any HTTP: a catalog's current build and model, loaded once.

`CatalogService.open(root)` loads the catalog's current build (a `Searcher`, its metadata
table in memory, its candidate index warmed) and the catalog's model. Every request
takes one `Snapshot` (one build, never half of two) and works on it alone. Each request
also stats the catalog's CURRENT pointer and tombstone file (two `os.stat`, a few µs):
when either changed, a background thread loads the new build, warms it and swaps the
snapshot in one assignment, while requests go on with the old one: no restart, no failed
request, no request that waits for a load.

Everything a client sends is checked here and refused with a `ServiceError` (HTTP 4xx
in `simdex.serve.app`): `where` filters run in the same locked-down DuckDB session as
`simdex sql` (`engine.sql.SqlSession`: no file, network or extension access), images
arrive as bytes (never a path), thumbnails are named by object id only.

Example:
    >>> svc = CatalogService.open("cat/")                             # doctest: +SKIP
    >>> svc.search(ids=[42], k=3)["results"][0]["score"]               # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import collections
import io
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from simdex.engine.catalog import Catalog, CatalogError
from simdex.engine.errors import SimdexError, as_object_ids
from simdex.engine.searcher import Searcher, SearchError

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_SQL_ROWS = 10_000
FILTER_CACHE = 64  # `where` predicates remembered per build (the page repeats its filter)
THUMBNAIL_CACHE = 4096
MEMBERSHIPS = ("auto", "gaussian", "trapezoid", "triangle", "max")


class ServiceError(Exception):
    """A request that cannot be answered as asked; `status` is its HTTP status, the message one line."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the library said
        if status is not None:
            self.status = status


class FilteredSearcher(Searcher):
    """A Searcher whose `where` filters run in the sandboxed SQL session, cached per predicate."""

    def __init__(self, catalog: Catalog, build_dir: Path):
        super().__init__(catalog, build_dir)
        self._sql = None
        self._sql_lock = threading.Lock()
        self._masks: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def sql_session(self):
        """The build's SqlSession (the one `simdex sql` uses), opened on first use. Hold `sql_lock`."""
        if self._sql is None:
            from simdex.engine.sql import SqlSession

            self._sql = SqlSession(self.catalog, searcher=self)
        return self._sql

    @property
    def sql_lock(self) -> threading.Lock:
        return self._sql_lock

    def filter_ids(self, where: str) -> np.ndarray:
        from simdex.engine.sql import SqlError

        with self._sql_lock:
            try:
                return self.sql_session().object_ids_where(where)
            except SqlError as exc:
                raise SearchError(f"bad where predicate {where!r}: {str(exc).splitlines()[0]}") from None

    def allow_mask(self, where: str | None = None) -> np.ndarray | None:
        if not where:
            return None if self.all_allowed else self.allowed.copy()
        with self._sql_lock:
            mask = self._masks.get(where)
        if mask is None:
            mask = self.allowed & np.isin(self.object_ids, self.filter_ids(where))
            with self._sql_lock:
                self._masks[where] = mask
                while len(self._masks) > FILTER_CACHE:
                    self._masks.popitem(last=False)
        return mask.copy()


def _omega_names(searcher) -> list[str]:
    """The Ω a request may name: the estimators the build stored, then its label columns' Ω by the
    column's name (`instance`: the same item), never the stored keys (`@instance`)."""
    names = searcher.estimator_names()
    return names + sorted(c for c in searcher.omega_columns() if c not in names)


@dataclass
class Snapshot:
    """One build and what a request needs of it; replaced as a whole, never changed."""

    searcher: FilteredSearcher
    objects: pa.Table  # metadata of the build's objects (no features), in object_id order
    object_ids: np.ndarray  # int64, sorted: the objects' ids, to find a row by id
    signature: tuple
    loaded_s: float
    thumbnails: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    @property
    def version(self) -> str:
        return self.searcher.version

    def rows_for(self, object_ids) -> list[dict]:
        """Metadata of objects, in the order asked; ids the build does not hold are skipped."""
        try:
            ids = as_object_ids(object_ids)
        except SimdexError:  # beyond int64: no such object
            return []
        pos = np.searchsorted(self.object_ids, ids).clip(0, max(len(self.object_ids) - 1, 0))
        ok = self.object_ids[pos] == ids if len(self.object_ids) else np.zeros(len(ids), bool)
        return self.objects.take(pa.array(pos[ok])).to_pylist()


def _signature(catalog: Catalog) -> tuple:
    """What changes when a build is published or objects are deleted (the catalog knows its files)."""
    return catalog.change_signature()


def _load_snapshot(catalog: Catalog) -> Snapshot:
    t0 = time.perf_counter()
    signature = _signature(catalog)
    build_dir = catalog.current_build_dir()
    if build_dir is None:
        raise ServiceError(f"catalog {catalog.root} has no build yet; run `simdex build --catalog {catalog.root}` first")
    searcher = FilteredSearcher(catalog, build_dir)
    _ = searcher.index  # warm: loaded before the swap, so the first request on the new build pays nothing more
    objects = catalog.read_objects().combine_chunks()  # one chunk: taking 10 rows of 1M 0.2 ms instead of 5
    ids = objects.column("object_id").to_numpy().astype(np.int64)
    if len(ids) > 1 and np.any(np.diff(ids) < 0):
        order = np.argsort(ids, kind="stable")
        objects, ids = objects.take(pa.array(order)), ids[order]
    return Snapshot(searcher, objects, ids, signature, time.perf_counter() - t0)


def _warm_exact_scan(snap: Snapshot) -> None:
    """Load the 8-bit codes of an exhaustive scan (above 200k objects; seconds at 1M) once the build is
    being served, in the background: queries go on meanwhile, and the first `exact` one waits less."""
    threading.Thread(target=lambda: snap.searcher.scanner, daemon=True, name="simdex-warm").start()


class CatalogService:
    """A catalog served: the current build (swapped when a new one is published) and the model.

    Args:
        catalog: the open catalog.
        load_model: load the catalog's model now (queries by image and similarity maps need it);
            without it, or when the model file is missing, those requests get a 503 with the reason.
        torch_threads: threads of one model run; requests run side by side, so 1 is right unless
            there are more cores than concurrent clients.
        workers: searches computed at once (default: the number of cores); the answer's `queue_ms`
            says how long it waited for one, `took_ms` how long it computed.
    """

    def __init__(self, catalog: Catalog, load_model: bool = True, torch_threads: int = 1, workers: int | None = None):
        self.catalog = catalog
        # At most `workers` searches compute at once (default: one per core); the others wait their turn.
        # 16 searches sharing 2 cores all finish late; queued, each runs at full speed and p50 stays low.
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self._slots = threading.BoundedSemaphore(self.workers)
        self._cache_lock = threading.Lock()
        self._snapshot = _load_snapshot(catalog)
        _warm_exact_scan(self._snapshot)
        self._reload_lock = threading.Lock()
        self._failed_signature: tuple | None = None
        self.reloads = 0
        self.net = None
        self.model_error: str | None = "the model is not loaded (the service started without it)"
        if load_model:
            self._load_model(torch_threads)

    @classmethod
    def open(cls, root: str | os.PathLike, **kwargs) -> CatalogService:
        """Open the catalog at `root` and load its current build (and model).

        Raises:
            ServiceError: not a catalog, or no build yet.
        """
        try:
            catalog = Catalog.open(root)
        except CatalogError as exc:
            raise ServiceError(str(exc)) from None
        return cls(catalog, **kwargs)

    def _load_model(self, torch_threads: int) -> None:
        from simdex.indexer.query_features import QueryImageError, catalog_model

        try:
            import torch

            torch.set_num_threads(max(1, int(torch_threads)))
            self.net = catalog_model(self.catalog)
            self.model_error = None
        except QueryImageError as exc:
            self.model_error = str(exc)
            log.warning("queries by image are off: %s", exc)

    # ------------------------------------------------------------------ builds, swapped

    def snapshot(self) -> Snapshot:
        """The build to answer this request with; starts loading a newly published one in the background."""
        snap = self._snapshot
        signature = _signature(self.catalog)
        if signature != snap.signature and signature != self._failed_signature and self._reload_lock.acquire(blocking=False):
            threading.Thread(target=self._reload_locked, args=(signature,), daemon=True, name="simdex-reload").start()
        return snap

    def reload(self) -> str:
        """Load the current build now if it changed (blocking); return the version now served."""
        with self._reload_lock:
            self._reload(_signature(self.catalog))
        return self._snapshot.version

    def _reload_locked(self, signature: tuple) -> None:
        try:
            self._reload(signature)
        finally:
            self._reload_lock.release()

    def _reload(self, signature: tuple) -> None:
        if signature == self._snapshot.signature:
            return
        try:
            snap = _load_snapshot(self.catalog)
        except Exception as exc:  # a broken build must not take the service down: keep serving the old one
            self._failed_signature = signature
            log.error("cannot load the new build of %s, still serving %s: %s", self.catalog.root,
                      self._snapshot.version, exc)
            return
        old, self._snapshot = self._snapshot, snap  # one assignment: requests see the old build or the new one
        self.reloads += 1
        log.info("now serving build %s (was %s; loaded in %.2f s)", snap.version, old.version, snap.loaded_s)
        _warm_exact_scan(snap)

    # ------------------------------------------------------------------ info

    def info(self) -> dict:
        """The catalog and the build being served: what a client needs to build a query."""
        snap = self.snapshot()
        s, cat = snap.searcher, self.catalog
        b = s.info
        recall = b.get("recall", {}) or {}
        return {
            "catalog": {"name": cat.root.name, "objects": cat.num_objects, "images": cat.num_images,
                        "errors": cat.num_errors, "region": cat.region, "num_features": cat.num_features,
                        "layers": [p["name"] for p in cat.phi], "deleted": int(len(s.deleted))},
            "build": {"version": snap.version, "objects": int(b["objects"]), "active": int(b["active"]),
                      "kept": int(b["kept"]), "omega": b["omega"]["estimator"], "omegas": _omega_names(s),
                      "tau": s.tau, "candidates": b.get("candidates"),
                      "recall_at_10": recall.get("recall_at_10_mean"), "created": b.get("created")},
            "columns": [n for n in snap.objects.column_names],
            "memberships": list(MEMBERSHIPS),
            "model": {"loaded": self.net is not None, "error": self.model_error,
                      "image_size": None if self.net is None else int(self.net.config.image_size),
                      "channels": None if self.net is None else int(self.net.config.in_channels)},
            "workers": self.workers,
            "limits": {"max_k": MAX_K, "max_upload_bytes": MAX_UPLOAD_BYTES, "max_sql_rows": MAX_SQL_ROWS},
            "reloads": self.reloads,
        }

    def object(self, object_id: int) -> dict:
        """An object's metadata row; 404 when the build being served does not hold it."""
        rows = self.snapshot().rows_for([object_id])
        if not rows:
            raise ServiceError(f"no object {object_id} in the build being served", 404)
        return rows[0]

    # ------------------------------------------------------------------ search

    def search(self, ids=None, features=None, k: int = 10, where: str | None = None, membership: str = "auto",
               tau: float | None = None, omega: str | None = None, exact: bool = False, explain: bool = False,
               n_candidates: int | None = None, snapshot: Snapshot | None = None) -> dict:
        """The k objects most like the query (object ids, or raw feature vectors), with P and metadata.

        Returns:
            {"version", "query", "results": [{rank, object_id, score, <metadata>, layers?}], "layer_most"
            (with explain: the most each layer can give to P), "queue_ms" (waiting for a worker),
            "took_ms" (computing)}
        Raises:
            ServiceError: a bad option, an unknown id, a bad `where` (400).
        """
        _check_options(k, membership, tau)
        t_queue = time.perf_counter()
        with self._slots:
            t0 = time.perf_counter()
            out = self._search(ids=ids, features=features, k=k, where=where, membership=membership, tau=tau, omega=omega,
                               exact=exact, explain=explain, n_candidates=n_candidates, snapshot=snapshot)
        out["queue_ms"] = round((t0 - t_queue) * 1000, 3)
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return out

    def _search(self, ids=None, features=None, k: int = 10, where: str | None = None, membership: str = "auto",
                tau: float | None = None, omega: str | None = None, exact: bool = False, explain: bool = False,
                n_candidates: int | None = None, snapshot: Snapshot | None = None) -> dict:
        snap = snapshot or self.snapshot()
        if where is not None and not where.strip():
            where = None
        try:
            table = snap.searcher.search(ids=ids, features=features, k=k, tau=tau, membership=membership, where=where,
                                         exact=exact, n_candidates=n_candidates, omega=omega, explain=explain,
                                         columns=[])
        except SearchError as exc:
            raise ServiceError(str(exc), 404 if str(exc).startswith("no object ") else 400) from None
        hits = table.to_pylist()
        meta = {r["object_id"]: r for r in snap.rows_for([h["object_id"] for h in hits])}
        results = [{**meta.get(h["object_id"], {}), **h} for h in hits]
        layer_most = snap.searcher.omega_per_layer(omega) if explain else None
        return {"version": snap.version, "query": {"ids": list(ids or []), "k": k, "where": where,
                                                   "membership": membership, "tau": tau or snap.searcher.tau,
                                                   "omega": omega or snap.searcher.info["omega"]["estimator"],
                                                   "exact": exact},
                "results": [_clean(r) for r in results], "layer_most": layer_most}

    def search_images(self, images: list[bytes], boxes: list[str | None] | None = None, **options) -> dict:
        """Search with uploaded image files (their bytes): each image's largest object, or the region
        in its box ("x0,y0,x1,y1", image pixels); several images form one set, as several ids do.
        `options` as for `search`; the answer adds `model_ms` (decoding and the model)."""
        if self.net is None:
            raise ServiceError(f"queries by image are off: {self.model_error}", 503)
        if not images:
            raise ServiceError("upload at least one image (form field `image`)")
        boxes = boxes or [None] * len(images)
        if len(boxes) != len(images):
            raise ServiceError(f"{len(boxes)} boxes for {len(images)} images")
        _check_options(options.get("k", 10), options.get("membership", "auto"), options.get("tau"))
        t_queue = time.perf_counter()
        with self._slots:
            t0 = time.perf_counter()
            features = self._image_features(images, boxes)
            model_ms = (time.perf_counter() - t0) * 1000
            out = self._search(features=features, **options)
        out["query"]["images"] = len(images)
        out["query"]["boxes"] = [b or None for b in boxes]
        out["model_ms"] = round(model_ms, 3)
        out["queue_ms"] = round((t0 - t_queue) * 1000, 3)
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return out

    def _image_features(self, images: list[bytes], boxes: list[str | None]) -> np.ndarray:
        from simdex.indexer.query_features import QueryImageError, array_features, parse_box
        from simdex.indexer.sources import ImageReadError, decode_image_bytes_for

        arrays, shown = [], []
        for n, data in enumerate(images, start=1):
            if len(data) > MAX_UPLOAD_BYTES:
                raise ServiceError(f"image {n} has {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}", 413)
            try:
                image, hw = decode_image_bytes_for(data, self.net.config.in_channels, self.net.config.image_size)
                arrays.append(image)
                shown.append(hw)
            except ImageReadError as exc:
                raise ServiceError(f"cannot read uploaded image {n}: {exc}") from None
        try:
            parsed = [None if not b else parse_box(b) for b in boxes]
            features = array_features(self.catalog, arrays, [f"uploaded image {n}" for n in range(1, len(arrays) + 1)],
                                      boxes=parsed, net=self.net, shown=shown)
        except QueryImageError as exc:
            raise ServiceError(str(exc)) from None
        return features

    # ------------------------------------------------------------------ pictures

    def thumbnail(self, object_id: int, size: int = 96) -> bytes:
        """A PNG of the object's image, at most `size` pixels a side (cached per build)."""
        if not 8 <= size <= 512:
            raise ServiceError(f"size must be between 8 and 512 pixels, got {size}")
        snap = self.snapshot()
        key = (int(object_id), int(size))
        png = snap.thumbnails.get(key)
        if png is not None:
            return png
        row = self.object(object_id)
        from PIL import Image

        from simdex.sheet import SheetError, read_catalog_image

        try:
            rgb = read_catalog_image(row["source"])  # (H, W, 3) uint8
        except SheetError as exc:
            raise ServiceError(str(exc), 404) from None
        im = Image.fromarray(rgb)
        scale = size / max(im.size)
        resample = Image.NEAREST if scale >= 1 else Image.BILINEAR  # small images stay crisp
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), resample)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        png = buf.getvalue()
        with self._cache_lock:
            snap.thumbnails[key] = png
            while len(snap.thumbnails) > THUMBNAIL_CACHE:
                snap.thumbnails.popitem(last=False)
        return png

    def explain_map(self, query_ids: list[int], answer_id: int, membership: str = "auto", tau: float | None = None,
                    omega: str | None = None, picture: bool = True) -> bytes | dict:
        """Similarity maps (Stylianou et al.) of a query and an answer: a PNG, or the parts of P as JSON
        with each image's pixel map (both images' maps sum to P). Re-runs the model on both images."""
        from simdex.explain_maps import ExplainError, draw_explanation, explain_pair

        if self.net is None:
            raise ServiceError(f"similarity maps are off: {self.model_error}", 503)
        _check_options(1, membership, tau)
        if not query_ids:
            raise ServiceError("give at least one query object id")
        snap = self.snapshot()
        try:
            with self._slots:
                expl = explain_pair(snap.searcher, query_ids, answer_id, membership=membership, tau=tau, omega=omega,
                                    net=self.net)
        except ExplainError as exc:
            raise ServiceError(str(exc), 404 if "no object" in str(exc) else 400) from None
        if not picture:
            return {"version": snap.version, **expl.to_dict(decimals=6)}
        buf = io.BytesIO()
        draw_explanation(expl, buf)
        return buf.getvalue()

    # ------------------------------------------------------------------ SQL

    def sql(self, statement: str, max_rows: int = 1000) -> dict:
        """Run SQL over the catalog in `simdex sql`'s session (read-only, nothing outside the catalog).

        Returns:
            {"version", "columns", "rows" (lists), "truncated", "took_ms"}
        """
        from simdex.engine.sql import SqlError

        if not statement or not statement.strip():
            raise ServiceError("give a SQL statement")
        if not 1 <= max_rows <= MAX_SQL_ROWS:
            raise ServiceError(f"max_rows must be between 1 and {MAX_SQL_ROWS}, got {max_rows}")
        t0 = time.perf_counter()
        snap = self.snapshot()
        s = snap.searcher
        rows, truncated, names = [], False, []
        with s.sql_lock:
            try:
                result = s.sql_session().batches(statement)
                if result is not None:
                    schema, batches = result
                    names = schema.names
                    for batch in batches:
                        rows.extend(batch.to_pylist())
                        if len(rows) > max_rows:
                            truncated = True
                            break
            except SqlError as exc:
                raise ServiceError(str(exc).replace("simdex sql", "the SQL endpoint")) from None
        return {"version": snap.version, "columns": names,
                "rows": [[_json_value(r[n]) for n in names] for r in rows[:max_rows]],
                "truncated": truncated, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}


def _check_options(k: int, membership: str, tau: float | None) -> None:
    if not 1 <= k <= MAX_K:
        raise ServiceError(f"k must be between 1 and {MAX_K}, got {k}")
    if membership not in MEMBERSHIPS:
        raise ServiceError(f"membership must be one of {', '.join(MEMBERSHIPS)}, got {membership!r}")
    if tau is not None and not (math.isfinite(tau) and tau > 0):
        raise ServiceError(f"tau must be a positive number, got {tau}")


def _json_value(v):
    """Values JSON can carry: NaN and infinities become null, bytes hex, the rest as they are or text."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if v is None or isinstance(v, bool | int | str):
        return v
    return str(v)


def _clean(row: dict) -> dict:
    return {k: _json_value(v) for k, v in row.items()}
