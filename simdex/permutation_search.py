"""Semantic (permutation-invariant) similarity of catalog objects and images, after Wald et al.:
a rerank mode for queries and the semantic vs spatio-semantic RSMs of a set of images.

Each object's response is a set of spatial feature vectors of one layer of φ: its box window
pooled to g×g cells, or (g = 0) every position of the whole map (`indexer.feature_maps`).
Responses are compared with `engine.permutation`: Pearson's r position by position
(spatio-semantic) or after the best matching of positions (semantic). The model runs again
on every image involved (the catalog stores pooled means, not maps).

Example:
    >>> s = Searcher.open("cat/")                                                   # doctest: +SKIP
    >>> hits = s.search(ids=[42], k=100)                                            # doctest: +SKIP
    >>> permutation_rerank(s, hits, [{"source": ..., "component": 0}], k=10)        # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from simdex.engine.errors import SimdexError
from simdex.engine.permutation import MATCHERS, semantic_similarity, spatial_similarity


class PermutationError(SimdexError):
    """A permutation-invariant query or RSM that cannot be computed as asked."""


def model_layers(catalog) -> list[str]:
    """Names of the model's layers in φ (without the `@rc` cell suffix of grid regions), in order."""
    names: list[str] = []
    for p in catalog.phi:
        name = p["name"].split("@")[0]
        if name not in names:
            names.append(name)
    return names


def resolve_layer(catalog, layer: str | None) -> int:
    """Index of `layer` among the model's layers; None = the second-to-last (a late layer that still
    has spatial detail: C91 of the U-Net). PermutationError names the layers there are."""
    names = model_layers(catalog)
    if layer is None:
        return max(0, len(names) - 2)
    if layer not in names:
        raise PermutationError(f"no layer {layer!r} in this catalog's model; layers: {', '.join(names)}")
    return names.index(layer)


def responses(catalog, rows: list[dict], layer: int, grid: int, net=None) -> np.ndarray:
    """Responses (m, n, C) of catalog objects or image files (`rows` with `source` and `component`)."""
    from simdex.indexer.feature_maps import FeatureMapError, object_maps, response_cells

    if grid < 0:
        raise PermutationError(f"grid must be ≥ 0 (0 = every position of the whole map), got {grid}")
    try:
        maps = object_maps(catalog, rows, net=net)
    except FeatureMapError as exc:
        raise PermutationError(str(exc)) from None
    return np.stack([response_cells(m, layer, grid) for m in maps])


def permutation_rerank(searcher, hits: pa.Table, query_rows: list[dict], k: int, layer: str | None = None,
                       grid: int = 4, matcher: str = "optimal", net=None) -> pa.Table:
    """Re-order search results by their semantic similarity to the query.

    Args:
        searcher: the open Searcher that produced `hits`.
        hits: a search result (rank, object_id, score, …), e.g. the best 100 by P.
        query_rows: the query objects or images ({source, component}); for a set, a result's
            similarity is its best over the queries.
        k: results kept after re-ordering.
        layer, grid, matcher: the response (see `responses`) and the matcher ('optimal', 'greedy').
    Returns:
        the best k of `hits` by semantic similarity, re-ranked, with columns `semantic` and
        `spatial` (Pearson's r after and before matching positions) after `score`.
    """
    if matcher not in MATCHERS:
        raise PermutationError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}")
    layer_i = resolve_layer(searcher.catalog, layer)
    ids = hits.column("object_id").to_numpy()
    if len(ids) == 0:
        return hits
    rows = searcher.metadata(ids, ["source", "component"]).to_pylist()
    resp = responses(searcher.catalog, list(query_rows) + rows, layer_i, grid, net=net)
    queries, cands = resp[:len(query_rows)], resp[len(query_rows):]
    semantic = np.array([max(semantic_similarity(q, c, matcher) for q in queries) for c in cands])
    spatial = np.array([max(spatial_similarity(q, c) for q in queries) for c in cands])
    order = np.argsort(-semantic, kind="stable")[:k]
    out = hits.take(pa.array(order))
    out = out.set_column(out.column_names.index("rank"), "rank", pa.array(np.arange(1, len(order) + 1), pa.int32()))
    at = out.column_names.index("score") + 1
    out = out.add_column(at, "semantic", pa.array(semantic[order], pa.float32()))
    return out.add_column(at + 1, "spatial", pa.array(spatial[order], pa.float32()))


def rsm_of(catalog, rows: list[dict], layer: str | None = None, grid: int = 0, matcher: str = "optimal",
           net=None) -> dict[str, np.ndarray]:
    """The semantic and spatio-semantic RSMs (m, m) of catalog objects or image files."""
    from simdex.engine.permutation import rsm

    if len(rows) < 2:
        raise PermutationError("an RSM needs at least two images")
    resp = responses(catalog, rows, resolve_layer(catalog, layer), grid, net=net)
    return {"semantic": rsm(resp, True, matcher), "spatio_semantic": rsm(resp, False)}


def write_rsms(matrices: dict[str, np.ndarray], names: list[str], out_dir: str | os.PathLike) -> list[Path]:
    """Each matrix as .npy and .csv (with a header of `names`), and one picture of all of them side by side."""
    from PIL import Image, ImageDraw

    from simdex.explain_maps import heat_colours

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, mat in matrices.items():
        np.save(out_dir / f"{key}.npy", mat)
        lines = ["," + ",".join(names)] + [names[i] + "," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(mat)]
        (out_dir / f"{key}.csv").write_text("\n".join(lines) + "\n")
        written += [out_dir / f"{key}.npy", out_dir / f"{key}.csv"]
    m = len(names)
    cell = max(4, min(24, 480 // m))
    side = m * cell
    pic = Image.new("RGB", (len(matrices) * (side + 20) + 20, side + 40), "white")
    draw = ImageDraw.Draw(pic)
    for i, (key, mat) in enumerate(matrices.items()):
        colours = heat_colours((np.clip(mat, -1, 1) + 1) / 2)  # r from −1 (dark) to 1 (bright)
        im = Image.fromarray(colours).resize((side, side), Image.NEAREST)
        x = 20 + i * (side + 20)
        pic.paste(im, (x, 24))
        draw.text((x, 6), f"{key.replace('_', '-')} RSM (r, -1 dark .. 1 bright)", fill="black")
    pic.save(out_dir / "rsm.png")
    return written + [out_dir / "rsm.png"]
