"""Retrieval quality with labels: precision@k and mAP of several rankings, side by side.

Queries come from one split (default `test`) and are ranked against the other
(default `train`, the gallery); an answer is relevant when it has the query's label.
Rankings compared in one run, on the same queries and gallery:

- fuzzy P (eq. 4, Gaussian memberships) with Ω from eq. 5, uniform, Welch, SVD and
  learned (`engine.omega_learned`, seeded): every one estimated here on the gallery's
  labels, never on the queries';
- fuzzy P with the build's Ω: the Ω `simdex build` stored and a query uses by default
  (estimated at build time from the rows `--omega-split` chose, normally the train split),
  or, when the build fitted an Ω to the classes of the label column judged here
  (`simdex query --omega instance`), that one: what a user asking for that kind of
  similarity gets;
- cosine similarity of the raw object vectors (the measure of Stylianou et al. and Park);
- L2 distance of the z-scored kept features (the space of the build);

every fuzzy ranking and the L2 of z are measured on the rows the build's Ω for the judged column
uses: the stored z, or the l2 rows where the build chose them for that column (`engine.row_map`);
- L2 distance of the raw pixels (no network at all: the floor to beat), in colour when
  the catalog's model reads 3 channels.

AP is computed over the whole ranked gallery (mean of the precision at each relevant
item's rank); mAP is its mean over queries. Catalogs without a split column are split
at random (seeded): `num_queries` objects become queries, the rest the gallery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from simdex.engine.errors import SimdexError
from simdex.engine.membership import Gaussian
from simdex.engine.metrics import rank_metrics
from simdex.engine.omega import ClassStats, OmegaInputs, make_omega
from simdex.engine.shard_reader import column_values
from simdex.engine.text_table import text_table

log = logging.getLogger(__name__)

BUILD_OMEGA = "fuzzy P, build's Ω"
FUZZY_METHODS = {"fuzzy P, Ω learned": "learned", "fuzzy P, Ω eq. 5": "clusters", "fuzzy P, Ω uniform": "uniform",
                 "fuzzy P, Ω Welch": "welch", "fuzzy P, Ω SVD": "svd", BUILD_OMEGA: "build"}
OTHER_METHODS = ("cosine, raw vectors", "L2, z-scored kept features", "L2, raw pixels")
METHODS = tuple(FUZZY_METHODS) + OTHER_METHODS


class EvaluationError(SimdexError, ValueError):
    """The catalog cannot be evaluated as asked (no labels, empty split, no build)."""


@dataclass
class EvalConfig:
    query_split: str = "test"
    gallery_split: str = "train"
    num_queries: int = 1000  # 0 = every object of the query split
    ks: tuple[int, ...] = (1, 10, 100)
    tau: float | None = None  # None: the build's τ
    label_column: str = "label"
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    threads: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))


def evaluate_arrays(
    zq: np.ndarray, zg: np.ndarray, labels_q: np.ndarray, labels_g: np.ndarray, omegas: dict[str, np.ndarray],
    tau: float, raw_q: np.ndarray | None = None, raw_g: np.ndarray | None = None,
    pix_q: np.ndarray | None = None, pix_g: np.ndarray | None = None, ks=(1, 10, 100),
    threads: int = 1, progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict]:
    """The metrics of every ranking, from arrays (the pure core of `evaluate`).

    Args:
        zq, zg: z-scored kept features of queries (q, d) and gallery (n, d).
        labels_q, labels_g: their labels (object arrays).
        omegas: name → Ω (d,) for the fuzzy rankings.
        raw_q, raw_g: raw object vectors for the cosine ranking (optional).
        pix_q, pix_g: flattened pixels for the pixel L2 ranking (optional).

    Returns: method → {"map", "p@k"…, "queries"} (`summarise` of `rank_queries`).
    """
    return summarise(rank_queries(zq, zg, labels_q, labels_g, omegas, tau, raw_q, raw_g, pix_q, pix_g, ks,
                                  threads, progress), ks)


def rank_queries(
    zq: np.ndarray, zg: np.ndarray, labels_q: np.ndarray, labels_g: np.ndarray, omegas: dict[str, np.ndarray],
    tau: float, raw_q: np.ndarray | None = None, raw_g: np.ndarray | None = None,
    pix_q: np.ndarray | None = None, pix_g: np.ndarray | None = None, ks=(1, 10, 100),
    threads: int = 1, progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, dict]]:
    """Every ranking's metrics for each query, in query order: [{method: {"ap", "p@k"…}}] (the
    arguments of `evaluate_arrays`)."""
    names = list(omegas)
    W = np.stack([omegas[n] for n in names], axis=1).astype(np.float32) if names else None  # (d, m)
    zg = np.ascontiguousarray(zg, dtype=np.float32)
    zg_sq = np.einsum("ij,ij->i", zg, zg)
    if raw_g is not None:
        rg = raw_g / np.maximum(np.linalg.norm(raw_g, axis=1, keepdims=True), 1e-12)
        rq = raw_q / np.maximum(np.linalg.norm(raw_q, axis=1, keepdims=True), 1e-12)
    if pix_g is not None:
        pg_sq = np.einsum("ij,ij->i", pix_g, pix_g)

    def one(q: int) -> dict[str, dict]:
        relevant = labels_g == labels_q[q]
        out = {}
        if W is not None:
            P = Gaussian(zq[q], tau)(zg) @ W  # (n, m): every Ω from one pass (eq. 2, then eq. 4)
            for j, name in enumerate(names):
                out[name] = rank_metrics(P[:, j], relevant, ks)
        # L2: rank by −‖a − b‖² = 2 a·b − ‖b‖² (the query's own norm does not change the order)
        out["L2, z-scored kept features"] = rank_metrics(2 * (zg @ zq[q]) - zg_sq, relevant, ks)
        if raw_g is not None:
            out["cosine, raw vectors"] = rank_metrics(rg @ rq[q], relevant, ks)
        if pix_g is not None:
            out["L2, raw pixels"] = rank_metrics(2 * (pix_g @ pix_q[q]) - pg_sq, relevant, ks)
        return out

    per_query: list[dict] = []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for res in pool.map(one, range(len(zq))):
            per_query.append(res)
            if progress:
                progress(len(per_query), len(zq))
    return per_query


def _metric_columns(per_query: list[dict], name: str, ks) -> dict[str, np.ndarray]:
    rows = [r[name] for r in per_query]
    return {"map": np.array([r["ap"] for r in rows], np.float64),
            **{f"p@{k}": np.array([r[f"p@{k}"] for r in rows], np.float64) for k in ks}}


def summarise(per_query: list[dict], ks) -> dict[str, dict]:
    """Mean of each metric over the queries: method → {"map", "p@k"…, "queries"}."""
    summary = {}
    for name in per_query[0] if per_query else []:
        columns = _metric_columns(per_query, name, ks)
        summary[name] = {key: float(v.mean()) for key, v in columns.items()} | {"queries": len(per_query)}
    return summary


def paired_differences(per_query: list[dict], reference: str, ks) -> dict[str, dict]:
    """How far `reference` ranks above each other ranking, query by query.

    Every ranking answers the same queries, so the difference of two means is best judged on the
    per-query differences (paired): its mean and a 95 % confidence interval, mean ± 1.96 standard
    errors (the normal approximation; a few hundred queries make it a fair one). An interval that
    holds 0 says the two rankings are not told apart by these queries.

    Returns: method → {metric: {"diff": mean(reference − method), "ci95": [low, high]}} for "map"
    and each "p@k"; {} without the reference or with fewer than 2 queries.

    Example:
        >>> q = [{"a": {"ap": a, "p@1": a}, "b": {"ap": b, "p@1": b}} for a, b in [(1, 0), (1, 1), (1, 0)]]
        >>> paired_differences(q, "a", ks=(1,))["b"]["map"]["diff"]
        0.6666666666666666
    """
    if len(per_query) < 2 or reference not in per_query[0]:
        return {}
    ref = _metric_columns(per_query, reference, ks)
    out = {}
    for name in per_query[0]:
        if name == reference:
            continue
        other = _metric_columns(per_query, name, ks)
        out[name] = {}
        for key, values in ref.items():
            delta = values - other[key]
            half = 1.96 * float(delta.std(ddof=1)) / np.sqrt(len(delta))
            out[name][key] = {"diff": float(delta.mean()), "ci95": [float(delta.mean() - half), float(delta.mean() + half)]}
    return out


def _pixels(sources: list[str], channels: int = 1, size: int = 32) -> np.ndarray:
    """Pixels of catalog images (grey, or RGB when `channels` is 3), resized to size×size when the
    images are larger than 64×64 or differ: (n, pixels·channels) float32 in [0, 1]."""
    from PIL import Image

    from simdex.sheet import read_catalog_image

    out = None
    for i, src in enumerate(sources):
        rgb = read_catalog_image(src)  # (H, W, 3) uint8
        if out is None:
            shape = rgb.shape[:2] if rgb.shape[0] * rgb.shape[1] <= 4096 else (size, size)
            out = np.empty((len(sources), shape[0] * shape[1] * (3 if channels == 3 else 1)), np.float32)
        if rgb.shape[:2] != shape:
            rgb = np.asarray(Image.fromarray(rgb).resize(shape[::-1], Image.BILINEAR))
        img = rgb.astype(np.float32) / 255.0
        out[i] = (img if channels == 3 else img.mean(axis=2)).ravel()
    return out if out is not None else np.zeros((0, size * size), np.float32)


def evaluate(root, config: EvalConfig | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate the current build of the catalog at `root` (see the module docstring).

    Returns a dict with the settings ("queries", "gallery", "tau", splits),
    "results": method → {"map", "p@1", "p@10", "p@100", "queries"}, and "paired": how far the
    build's Ω ranks above each other ranking on the same queries, with 95 % confidence
    intervals (`paired_differences`; {} when the build's Ω is not among the methods).

    Raises:
        EvaluationError: no build, no label column, an empty split.
    """
    from simdex.engine.catalog import Catalog
    from simdex.engine.searcher import Searcher, SearchError

    config = config or EvalConfig()
    unknown = set(config.methods) - set(METHODS)
    if unknown:
        raise EvaluationError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    report = progress or (lambda stage, done, total: None)
    try:
        searcher = Searcher.open(root)
    except SearchError as exc:
        raise EvaluationError(str(exc)) from None
    catalog: Catalog = searcher.catalog
    labels, sources, q_rows, g_rows, splits = _queries_and_gallery(searcher, config)

    column = config.label_column if config.label_column in searcher.omega_columns() else None
    Z, _ = searcher.space_of(column)  # the build's Ω for this column is measured on these rows: so is every Ω here
    zq, zg = np.asarray(Z[q_rows]), np.asarray(Z[g_rows])
    labels_q, labels_g = labels[q_rows], labels[g_rows]
    d = Z.shape[1]
    tau = searcher.tau if config.tau is None else config.tau
    omegas = _gallery_omegas(zg, labels_g, searcher.v1, config.methods, tau, config.seed)
    build_omega = _build_omega_for(searcher, config.label_column)
    if BUILD_OMEGA in config.methods:
        omegas[BUILD_OMEGA] = np.asarray(searcher.omega_named(column), np.float32)
    raw_q = raw_g = pix_q = pix_g = None
    if "cosine, raw vectors" in config.methods:
        raw_q, raw_g = _raw_vectors(catalog, np.asarray(searcher.object_ids), q_rows, g_rows, report)
    if "L2, raw pixels" in config.methods:
        report("pixels", 0, 1)
        channels = int((catalog.info.get("config") or {}).get("in_channels", 1))
        pix_q, pix_g = _pixels(list(sources[q_rows]), channels), _pixels(list(sources[g_rows]), channels)
    per_query = rank_queries(zq, zg, labels_q, labels_g, omegas, tau, raw_q, raw_g, pix_q, pix_g, config.ks,
                             config.threads, progress=lambda a, b: report("queries", a, b))
    per_query = [{m: r[m] for m in config.methods if m in r} for r in per_query]
    results = summarise(per_query, config.ks)
    paired = paired_differences(per_query, BUILD_OMEGA, config.ks)
    return {"catalog": str(root), "build": searcher.version, "queries": int(len(q_rows)),
            "gallery": int(len(g_rows)), "tau": tau, "kept_features": d, **splits, "ks": list(config.ks),
            "build_omega": build_omega, "row_norm": searcher.pruning.row_norm,
            "omega_row_map": searcher.row_map_of(column), "results": results,
            "paired": {"reference": BUILD_OMEGA, "differences": paired} if paired else {}}


def _queries_and_gallery(searcher, config: EvalConfig):
    """Label and source of every build row, the query and gallery rows, and how they were split."""
    catalog = searcher.catalog
    columns = catalog.shards().columns
    if config.label_column not in columns:
        raise EvaluationError(f"no '{config.label_column}' column to judge relevance; columns: {', '.join(columns)}")
    want = ["object_id", config.label_column, "source"] + (["split"] if "split" in columns else [])
    table = catalog.read_objects(want)
    ids = table.column("object_id").to_numpy()
    order = np.argsort(ids)
    pos = order[np.searchsorted(ids[order], np.asarray(searcher.object_ids))]  # table row of each build row
    labels = column_values(table, config.label_column)[pos]
    sources = column_values(table, "source")[pos]
    usable = searcher.allowed & np.array([lab is not None for lab in labels])
    rng = np.random.default_rng(config.seed)
    if "split" in columns:
        split = column_values(table, "split")[pos]
        q_rows = np.flatnonzero(usable & (split == config.query_split))
        g_rows = np.flatnonzero(usable & (split == config.gallery_split))
        splits = {"query_split": config.query_split, "gallery_split": config.gallery_split}
    else:
        rows = np.flatnonzero(usable)
        n_q = min(config.num_queries or len(rows) // 5, len(rows) // 2)
        chosen = np.zeros(len(searcher.object_ids), bool)
        chosen[rng.choice(rows, n_q, replace=False)] = True
        q_rows, g_rows = np.flatnonzero(chosen), np.flatnonzero(usable & ~chosen)
        splits = {"query_split": "random", "gallery_split": "rest"}
    if len(q_rows) == 0 or len(g_rows) == 0:
        raise EvaluationError(f"no labelled objects in split {config.query_split!r} (queries: {len(q_rows)}) or "
                              f"{config.gallery_split!r} (gallery: {len(g_rows)})")
    if config.num_queries and len(q_rows) > config.num_queries:
        q_rows = np.sort(rng.choice(q_rows, config.num_queries, replace=False))
    return labels, sources, q_rows, g_rows, splits


def _build_omega_for(searcher, label_column: str) -> str:
    """Which of the build's Ω the evaluation of `label_column` uses (module docstring), as a name."""
    record = searcher.info["omega"]
    key = searcher.omega_columns().get(label_column)
    if key is None or record.get("classes_from") == label_column:
        return record["estimator"]
    return f"{record['columns'][label_column]['estimator']} for {label_column}"


def _gallery_omegas(zg: np.ndarray, labels_g: np.ndarray, v1: np.ndarray, methods, tau: float = 1.0,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Ω of every fuzzy ranking asked for, estimated on the gallery's labels only (learned Ω: fitted
    and its λ validated on a seeded sample of the gallery, `engine.omega_learned`)."""
    from simdex.engine.omega_learned import LearnedOmegaConfig, closed_form_references, learn_omega

    fuzzy = [m for m in methods if m in FUZZY_METHODS and m != BUILD_OMEGA]
    if not fuzzy:
        return {}
    d = zg.shape[1]
    stats = ClassStats(d)
    stats.update(zg, labels_g)
    out = {}
    for name in fuzzy:
        if FUZZY_METHODS[name] == "learned":
            out[name] = learn_omega(zg, labels_g, tau, LearnedOmegaConfig(seed=seed),
                                    reference=closed_form_references(zg, labels_g, stats)).omega.astype(np.float32)
        else:
            inputs = OmegaInputs(dim=d, v1=v1, class_stats=stats)
            out[name] = make_omega(FUZZY_METHODS[name]).estimate(inputs).astype(np.float32)
    return out


def _raw_vectors(catalog, object_ids: np.ndarray, q_rows, g_rows, report) -> tuple[np.ndarray, np.ndarray]:
    """Raw object vectors of the query and gallery rows, streamed from the shards."""
    raw_q = np.empty((len(q_rows), catalog.num_features), np.float32)
    raw_g = np.empty((len(g_rows), catalog.num_features), np.float32)
    slot = np.full((2, len(object_ids)), -1, np.int64)  # build row -> position among queries / gallery
    slot[0, q_rows], slot[1, g_rows] = np.arange(len(q_rows)), np.arange(len(g_rows))
    done = 0
    for ids, x in catalog.iter_features():
        rows = np.searchsorted(object_ids, ids)
        ok = (rows < len(object_ids)) & (object_ids[np.minimum(rows, len(object_ids) - 1)] == ids)
        rows, x = rows[ok], x[ok]
        for out, where in ((raw_q, slot[0, rows]), (raw_g, slot[1, rows])):
            out[where[where >= 0]] = x[where >= 0]
        done += len(ids)
        report("raw vectors", done, catalog.num_objects)
    return raw_q, raw_g


def format_difference(d: dict) -> str:
    """One paired difference of `paired_differences` as text: '+0.0123 (+0.0050 … +0.0196)'."""
    return f"{d['diff']:+.4f} ({d['ci95'][0]:+.4f} … {d['ci95'][1]:+.4f})"


def format_table(result: dict, paired: bool = True) -> str:
    """The evaluation as an aligned text table; with `paired`, below it the build's Ω minus each
    other ranking on the same queries (P@10, or the first cut-off, and mAP, with 95 % intervals)."""
    ks = result["ks"]
    head = ["ranking"] + [f"P@{k}" for k in ks] + ["mAP"]
    rows = []
    for name, m in result["results"].items():
        rows.append([name] + [f"{m[f'p@{k}']:.4f}" for k in ks] + [f"{m['map']:.4f}"])
    text = text_table(head, rows, rule=True)
    differences = (result.get("paired") or {}).get("differences") or {}
    if not paired or not differences:
        return text
    k = 10 if 10 in ks else ks[0]
    rows = [[name, format_difference(d[f"p@{k}"]), format_difference(d["map"])] for name, d in differences.items()]
    title = (f"\n{result['paired']['reference']} minus each ranking, paired over the same {result['queries']:,} "
             f"queries (mean, 95 % interval; one that holds 0 does not tell the two apart):\n")
    return text + title + text_table(["ranking", f"ΔP@{k}", "ΔmAP"], rows, rule=True)
