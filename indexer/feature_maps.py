"""The feature maps of catalog objects, re-computed: what a similarity map splits P over.

A catalog stores one mean per channel and window (x_ij), not the maps themselves, so a
similarity map (`simdex.engine.simmap`) runs the catalog's model again on the object's
image (read from its `source`), finds the same component, and returns φ's activations
with the object's window weights at every layer, exactly as extraction used them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simdex.engine.catalog import Catalog, region_cells
from simdex.engine.errors import SimdexError


class FeatureMapError(SimdexError):
    """An object whose maps cannot be re-computed (image gone, model changed, object not found again)."""


@dataclass
class ObjectMaps:
    """One object's φ maps and windows, on the model's input canvas."""

    canvas: np.ndarray  # (C, S, S) the image as the model saw it (fitted and padded)
    placement: tuple[int, int, float, int, int]  # image h, w, scale, top, left: y_img = (y_canvas - top) / scale
    box: tuple[int, int, int, int]  # the object's box on the canvas, x0, y0, x1, y1 (half-open)
    acts: list[np.ndarray]  # per model layer of φ: (C_l, h_l, w_l)
    windows: list[np.ndarray]  # per φ entry of the catalog (layer, or layer and cell): (h_l, w_l), summing to 1
    features: np.ndarray  # (N,) the raw vector re-computed from these maps


def object_maps(catalog: Catalog, objects: list[dict], net=None) -> list[ObjectMaps]:
    """Re-compute the maps of catalog objects.

    Args:
        catalog: the catalog the objects belong to (its model, region mode and φ).
        objects: rows with `source` and `component` (as `Catalog.read_objects` gives them).
        net: the catalog's model, if already loaded.
    Returns:
        one ObjectMaps per row, in order.
    Raises:
        FeatureMapError: the image cannot be read, the model is missing or another one, or the
            model no longer finds the object's component.
    """
    import torch

    from simdex.indexer.extract import find_objects, object_features, region_weights
    from simdex.indexer.query_features import QueryImageError, catalog_model
    from simdex.indexer.sources import ImageReadError, fit_to_size, read_source_image_for

    if net is None:
        try:
            net = catalog_model(catalog)
        except QueryImageError as exc:
            raise FeatureMapError(str(exc)) from None
    cfg = net.config
    region, cells = catalog.region, region_cells(catalog.region)
    out = []
    for row in objects:
        try:
            image, shown = read_source_image_for(row["source"], cfg.in_channels, cfg.image_size)
        except ImageReadError as exc:
            raise FeatureMapError(f"cannot read the image of object {row.get('object_id')}: {exc}") from None
        canvas, scale, top, left = fit_to_size(image, cfg.image_size, original_hw=shown)
        with torch.inference_mode():
            logits, acts = net(torch.from_numpy(canvas)[None])
            foreground = logits[:, 1] > logits[:, 0] if logits.shape[1] == 2 else logits.argmax(1) != 0
            found = find_objects(foreground, "all", 1)  # every component: `component` is its rank by area
            k = np.flatnonzero(found.component.numpy() == int(row["component"]))
            if len(k) == 0:
                raise FeatureMapError(f"the model no longer finds component {row['component']} of object "
                                      f"{row.get('object_id')} in {row['source']}")
            features = object_features(acts, found, region).numpy()[k[0]]
            masks = found.masks() if region.startswith("mask") else None
            out_hw = tuple(found.label_map.shape[1:])
            windows, by_size = [], {}
            for a in acts:
                hw = tuple(a.shape[2:])
                if hw not in by_size:
                    w = region_weights(found, region, out_hw, hw, masks).numpy()  # (M·cells, h, w)
                    by_size[hw] = w[k[0] * cells:(k[0] + 1) * cells]
                windows.extend(by_size[hw])
        out.append(ObjectMaps(canvas=canvas, placement=(shown[0], shown[1], scale, top, left),
                              box=tuple(int(v) for v in found.bbox[k[0]].tolist()),
                              acts=[a[0].numpy() for a in acts], windows=windows, features=features))
    return out


def response_cells(maps: ObjectMaps, layer: int, grid: int) -> np.ndarray:
    """One object's response at model layer `layer` as a set of spatial vectors (n, C_l).

    Args:
        maps: from `object_maps`.
        layer: index of the layer in φ's model layers.
        grid: g > 0: the object's box window at that layer (DESIGN §3's rounding) pooled to g×g cells
            (n = g², row-major; windows smaller than g repeat positions); 0: every position of the
            whole map (n = h·w), Wald et al.'s whole-image response.
    """
    import torch
    from torch.nn import functional as F

    from simdex.indexer.extract import bbox_windows

    acts = torch.from_numpy(np.ascontiguousarray(maps.acts[layer]))  # (C, h, w)
    c, h, w = acts.shape
    if grid == 0:
        return acts.reshape(c, h * w).T.numpy().astype(np.float32)
    x0, y0, x1, y1 = bbox_windows(torch.tensor([maps.box]), tuple(maps.canvas.shape[1:]), (h, w))[0].tolist()
    cells = F.adaptive_avg_pool2d(acts[None, :, y0:y1, x0:x1], grid)[0]  # (C, g, g)
    return cells.reshape(c, grid * grid).T.numpy().astype(np.float32)
