"""Similarity maps of a query and an answer (Stylianou et al.): where on each image their P comes from.

`explain_pair(searcher, query_ids, answer_id)` re-runs the catalog's model on the images
(`simdex.indexer.feature_maps`), splits each feature's term ω_j g_ij of P over its
window's positions in proportion to their share of x_ij (`simdex.engine.simmap`), and
returns, for every image, the map per layer (and cell, for grid regions) and carried to
the input's pixels: each image's map sums to P. `draw_explanation` draws the maps over
the images (PNG); `PairExplanation.to_dict` is the same as JSON. The terms come from the
build's stored z-scores, so the maps add up to the very P that `simdex query` prints.

Example:
    >>> from simdex.engine.searcher import Searcher             # doctest: +SKIP
    >>> e = explain_pair(Searcher.open("cat/"), [0], 25719)    # doctest: +SKIP
    >>> round(e.P, 4), round(e.images[1].pixel_map.sum(), 4)   # doctest: +SKIP
    (0.9913, 0.9913)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simdex.engine.catalog import region_cells
from simdex.engine.errors import SimdexError
from simdex.engine.simmap import EntryLayout, entry_maps, feature_terms, pixel_map, to_pixels


class ExplainError(SimdexError):
    """A pair that cannot be explained as asked; the message says why."""


@dataclass
class ImageMap:
    """The similarity map of one image of the pair, on the model's input canvas (S × S)."""

    object_id: int
    role: str  # "query" or "answer"
    source: str
    canvas: np.ndarray  # (C, S, S) the image as the model saw it
    placement: tuple  # image h, w, scale, top, left (y_img = (y_canvas - top) / scale)
    box: tuple  # the object's box on the canvas, x0, y0, x1, y1
    pixel_map: np.ndarray  # (S, S) float64, sums to P
    layer_maps: dict[str, np.ndarray]  # model layer → (h_l, w_l) at its resolution (cells summed), all sum to P
    entry_maps: dict[str, np.ndarray]  # φ entry (layer, or layer@cell) → (h_l, w_l)
    z_error: float  # max |z re-computed − z stored| over the kept features (σ units): 0 up to float noise


@dataclass
class PairExplanation:
    query_ids: list[int]
    answer_id: int
    P: float
    membership: str
    tau: float
    omega: str
    layer_parts: dict[str, float]  # model layer → its part of P
    entry_parts: dict[str, float]  # φ entry → its part of P (the same as layer_parts without cells)
    images: list[ImageMap] = field(default_factory=list)

    def to_dict(self, decimals: int | None = None) -> dict:
        """JSON-ready: P, the parts, and for each image its pixel map and layer maps as nested lists."""
        def arr(a):
            return (np.round(a, decimals) if decimals is not None else a).tolist()

        return {
            "query": self.query_ids, "answer": self.answer_id, "P": self.P, "membership": self.membership,
            "tau": self.tau, "omega": self.omega, "layers": self.layer_parts,
            **({"cells": self.entry_parts} if self.entry_parts.keys() != self.layer_parts.keys() else {}),
            "images": [{
                "object_id": im.object_id, "role": im.role, "source": im.source,
                "canvas_size": list(im.pixel_map.shape),
                "placement": dict(zip(("height", "width", "scale", "top", "left"), im.placement, strict=True)),
                "box": list(im.box), "map_sum": float(im.pixel_map.sum()), "z_error": im.z_error,
                "map": arr(im.pixel_map),
                "layer_maps": {name: arr(m) for name, m in im.layer_maps.items()},
            } for im in self.images],
        }


def _parts(terms: np.ndarray, layout, names: list[str], layer_names: list[str]) -> tuple[dict, dict]:
    """P split by entry of φ (a layer, or a layer's cell) and by layer: both sum to P."""
    entry_parts = {names[e]: float(terms[layout.entry == e].sum()) for e in np.unique(layout.entry)}
    layer_parts: dict[str, float] = {}
    for e in np.unique(layout.entry):
        name = layer_names[layout.layer_of_entry[e]]
        layer_parts[name] = layer_parts.get(name, 0.0) + entry_parts[names[e]]
    return entry_parts, layer_parts


def _image_maps(searcher, ids, meta, maps, terms, layout, names, layer_names, z_stored) -> list[ImageMap]:
    """Each image's maps (per entry, per layer, in pixels) of the terms of P, and how far its features
    computed again are from the stored ones (z_error)."""
    images = []
    for i, (row, om) in enumerate(zip(meta, maps, strict=True)):
        size = om.canvas.shape[1:]
        per_entry = entry_maps(terms, layout, om.acts, om.windows)
        per_layer: dict[str, np.ndarray] = {}
        for e, mp in per_entry.items():
            name = layer_names[layout.layer_of_entry[e]]
            per_layer[name] = per_layer[name] + mp if name in per_layer else mp
        z_again = searcher.pruning.normalise(om.features[None])[0]
        images.append(ImageMap(
            object_id=ids[i], role="answer" if i == len(ids) - 1 else "query", source=row["source"],
            canvas=om.canvas, placement=om.placement, box=om.box, pixel_map=pixel_map(per_entry, size),
            layer_maps=per_layer, entry_maps={names[e]: mp for e, mp in per_entry.items()},
            z_error=float(np.max(np.abs(z_again - z_stored[i]))) if len(z_again) else 0.0))
    return images


def explain_pair(searcher, query_ids, answer_id: int, membership: str = "auto", tau: float | None = None,
                 omega: str | None = None, net=None) -> PairExplanation:
    """The similarity maps of the query objects and the answer.

    Args:
        searcher: an open `Searcher` (the catalog's current build).
        query_ids: one object id (Gaussian membership) or several (one fuzzy set).
        answer_id: the object whose P is explained.
        membership, tau, omega: as for `Searcher.search` (auto = gaussian for one query, trapezoid for a set).
        net: the catalog's model, if already loaded.
    Returns:
        PairExplanation; every image's pixel map and layer maps sum to P.
    Raises:
        ExplainError: unknown id, bad option, or an image whose maps cannot be re-computed.
    """
    from simdex.engine.searcher import SearchError
    from simdex.indexer.feature_maps import FeatureMapError, object_maps

    query_ids = [int(i) for i in query_ids]
    if not query_ids:
        raise ExplainError("give at least one query object id")
    try:
        weights = searcher.omega_named(omega)
        query = searcher.query_from_ids(query_ids)
        answer_row = searcher.rows_of([answer_id])[0]
        Z, row_map = searcher.space_of(omega)  # the rows the Ω is measured on (the stored z, or l2 rows)
        m = searcher.membership_of(query.mapped(row_map), membership, tau)
    except SearchError as exc:
        raise ExplainError(str(exc)) from None
    terms = feature_terms(m(np.asarray(Z[answer_row], np.float32)[None])[0], weights)  # (d,), sums to P
    catalog = searcher.catalog
    cells = region_cells(catalog.region)
    layout = EntryLayout.from_phi(searcher.kept, catalog.phi, cells)
    names = [p["name"] for p in catalog.phi]
    layer_names = [n.split("@")[0] for n in names[::cells]]
    entry_parts, layer_parts = _parts(terms, layout, names, layer_names)

    ids = query_ids + [int(answer_id)]
    meta = searcher.metadata(np.asarray(ids, np.int64), ["source", "component"]).to_pylist()
    try:
        maps = object_maps(catalog, meta, net=net)
    except FeatureMapError as exc:
        raise ExplainError(str(exc)) from None
    z_answer = np.asarray(searcher.Z[answer_row], np.float32)
    z_stored = np.concatenate([query.z[np.argsort(np.argsort(query_ids))], z_answer[None]])  # in `ids` order
    images = _image_maps(searcher, ids, meta, maps, terms, layout, names, layer_names, z_stored)
    return PairExplanation(query_ids=query_ids, answer_id=int(answer_id), P=float(terms.sum()),
                           membership=m.name, tau=m.tau,
                           omega=omega or searcher.info["omega"]["estimator"], layer_parts=layer_parts,
                           entry_parts=entry_parts, images=images)


# ----------------------------------------------------------------------------- pictures

# An 'inferno'-like ramp: dark for no contribution, bright yellow for the most.
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], np.float64)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) → uint8 RGB (…, 3) on the ramp."""
    v = np.clip(np.asarray(values, np.float64), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).astype(np.uint8)


def _rgb(canvas: np.ndarray) -> np.ndarray:
    c = np.clip(canvas, 0, 1)
    c = np.repeat(c, 3, axis=0) if c.shape[0] == 1 else c[:3]
    return (c.transpose(1, 2, 0) * 255).astype(np.float64)  # (S, S, 3)


def overlay(canvas: np.ndarray, heat: np.ndarray, vmax: float, alpha: float = 0.6) -> np.ndarray:
    """The image (C, S, S) in grey with the map (S, S) over it, scaled to `vmax`: uint8 (S, S, 3)."""
    grey = _rgb(canvas).mean(axis=2, keepdims=True)
    colours = heat_colours(heat / vmax if vmax > 0 else heat * 0).astype(np.float64)
    return ((1 - alpha) * grey + alpha * colours).astype(np.uint8)


def draw_explanation(expl: PairExplanation, path, tile: int = 128, small: int = 56,
                     per_row: int | None = None) -> Path:
    """One row per image: the image, its pixel map over it (one colour scale for all images), then each
    layer's map carried to pixels (each on its own scale, captioned with its part of P). PNG, to a path
    or to a binary file object."""
    from PIL import Image, ImageDraw

    cap = 12
    layer_names = list(expl.layer_parts)
    per_row = per_row or (len(layer_names) if len(layer_names) <= 10 else -(-len(layer_names) // 2))
    rows_small = -(-len(layer_names) // per_row)
    block_h = max(tile + cap, rows_small * (small + cap))
    width = max(2 * tile + 16 + per_row * small, 560)
    title_h = 18
    sheet = Image.new("RGB", (width, title_h + len(expl.images) * (block_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    queries = ",".join(map(str, expl.query_ids))
    draw.text((4, 3), f"P(answer {expl.answer_id} | query {queries}) = {expl.P:.4f}   ({expl.membership}, "
                      f"tau {expl.tau:g}, omega {expl.omega}); each map sums to P", fill="black")
    vmax = max(float(im.pixel_map.max()) for im in expl.images)
    for r, im in enumerate(expl.images):
        y = title_h + r * (block_h + 8)
        size = im.pixel_map.shape
        base = Image.fromarray(_rgb(im.canvas).astype(np.uint8)).resize((tile, tile), Image.NEAREST)
        sheet.paste(base, (0, y))
        draw.text((2, y + tile), f"{im.role} {im.object_id}", fill="darkred" if im.role == "query" else "black")
        heat = Image.fromarray(overlay(im.canvas, im.pixel_map, vmax)).resize((tile, tile), Image.NEAREST)
        sheet.paste(heat, (tile + 4, y))
        draw.text((tile + 6, y + tile), f"map, sum {im.pixel_map.sum():.4f}", fill="black")
        for k, name in enumerate(layer_names):
            px = to_pixels(im.layer_maps[name], size)
            tile_im = Image.fromarray(overlay(im.canvas, px, float(px.max()))).resize((small, small), Image.NEAREST)
            x0 = 2 * tile + 16 + (k % per_row) * small
            y0 = y + (k // per_row) * (small + cap)
            sheet.paste(tile_im, (x0, y0))
            draw.text((x0 + 1, y0 + small), f"{name} {expl.layer_parts[name]:.3f}", fill="black")
    if isinstance(path, str | os.PathLike):
        path = Path(path)
    sheet.save(path, format="PNG")  # a path, or a binary file object (the service sends the bytes)
    return path
