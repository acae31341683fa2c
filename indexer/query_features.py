"""Raw feature vectors of new images with a catalog's own model: what `simdex query --image` searches with.

Images are prepared as the indexer prepares them (decoded, fitted to the model's canvas),
segmented by the model, and the largest object of each image gives one vector of the
catalog's N features, with the catalog's region mode. For a catalog of the U-Net, the
forward pass and the extraction run in numpy (`indexer.lite`) once its weights are
exported, which the indexer and the first query do: no torch import, ~3 s less per CLI
process. torchvision backbones, and callers that pass a torch model, use torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from simdex.engine.catalog import Catalog
from simdex.engine.errors import SimdexError


class QueryImageError(SimdexError):
    """An image that cannot be turned into a query (unreadable, no object, model missing)."""


def catalog_model(catalog: Catalog):
    """The model the catalog was indexed with, in eval mode; QueryImageError if it is missing or another one.
    A torchvision backbone (`indexer.backbones`) is rebuilt from the catalog's record and its weights file."""
    from simdex.indexer.backbones import BackboneError, is_backbone, load_catalog_backbone
    from simdex.indexer.checkpoint import ModelFileError, load_model

    model_path = catalog.info.get("model_path")
    config = catalog.info.get("config", {})
    try:
        loaded = load_catalog_backbone(config, model_path) if is_backbone(config) else load_model(model_path)
    except (ModelFileError, BackboneError) as exc:
        raise QueryImageError(f"cannot load the catalog's model {model_path}: {exc}") from None
    if loaded.sha256 != catalog.model_sha256:
        raise QueryImageError(f"the model at {model_path} is not the one the catalog was indexed with "
                              f"({loaded.sha256[:12]}… vs {catalog.model_sha256[:12]}…)")
    return loaded.model.eval()


def query_net(catalog: Catalog):
    """The cheapest forward pass for the catalog's model: its numpy export (`indexer.lite.LiteUNet`)
    when one of exactly this model is cached, else the torch model (exported for next time)."""
    from simdex.indexer.lite import LiteUNet, export, lite_path

    # the U-Net's config says arch "unet" (older catalogs: nothing); backbones name theirs.
    # Not `backbones.is_backbone`: that module imports torch, which is what this avoids.
    unet = catalog.info.get("config", {}).get("arch", "unet") == "unet"
    if unet and catalog.model_sha256:
        lite = LiteUNet.load(lite_path(catalog.model_sha256), catalog.model_sha256)
        if lite is not None:
            return lite
    net = catalog_model(catalog)
    if unet:
        export(net, catalog.model_sha256)
    return net


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' (image pixels, half-open: x0 ≤ x < x1) → a tuple; QueryImageError says what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        x0, y0, x1, y1 = (int(p) for p in parts)
    except ValueError:
        raise QueryImageError(f"a box is four integers x0,y0,x1,y1 in image pixels (e.g. 4,2,20,26), got {text!r}") from None
    if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
        raise QueryImageError(f"box {text!r} is empty or negative: it needs 0 ≤ x0 < x1 and 0 ≤ y0 < y1")
    return x0, y0, x1, y1


def box_on_canvas(box: tuple[int, int, int, int], placement: tuple[int, int, float, int, int],
                  size: int) -> tuple[int, int, int, int]:
    """A box in image pixels → the canvas's pixels (`fit_to_size`'s scale and offset), rounded outward,
    at least one pixel. QueryImageError when the box does not lie inside the image."""
    h, w, scale, top, left = placement
    x0, y0, x1, y1 = box
    if x1 > w or y1 > h:
        raise QueryImageError(f"box {x0},{y0},{x1},{y1} reaches outside the image ({w}×{h} pixels: x1 ≤ {w}, y1 ≤ {h})")
    cx0, cy0 = math.floor(x0 * scale + left), math.floor(y0 * scale + top)
    cx1, cy1 = math.ceil(x1 * scale + left), math.ceil(y1 * scale + top)
    cx0, cy0 = min(cx0, size - 1), min(cy0, size - 1)
    return cx0, cy0, max(min(cx1, size), cx0 + 1), max(min(cy1, size), cy0 + 1)


def image_features(catalog: Catalog, paths: list[str | os.PathLike], min_area: int = 1,
                   boxes: list[tuple[int, int, int, int] | None] | None = None, net=None) -> np.ndarray:
    """Features (len(paths), N) float32 of the largest object of each image, or of a box.

    Args:
        boxes: per image, None (the model's largest object) or a box x0, y0, x1, y1 in the image's
            pixels: the region is then the box itself (query by a region, Stylianou et al.): the model
            still sees the whole image, and the catalog's region mode pools inside the box (`mask`:
            the predicted segment within the box, or the box where it holds none).
        net: the catalog's model, if already loaded (`catalog_model` or `query_net`); else `query_net`.
    Raises:
        QueryImageError: the catalog's model file is missing or different, an image cannot be
            decoded, the model finds no object in it, or a box is outside the image or cannot
            select anything (a catalog of `full` regions pools whole images).
    """
    from simdex.indexer.sources import ImageReadError, decode_image_for

    net = query_net(catalog) if net is None else net
    images, shown = [], []
    for path in paths:
        try:  # as the index job decoded it (a large JPEG at a fraction of its size)
            image, hw = decode_image_for(Path(path), net.config.in_channels, net.config.image_size)
        except ImageReadError as exc:
            raise QueryImageError(f"cannot read {path}: {exc}") from None
        images.append(image)  # (C, H', W')
        shown.append(hw)  # (H, W) as stored: what boxes refer to
    return array_features(catalog, images, [str(p) for p in paths], min_area, boxes, net, shown)


def array_features(catalog: Catalog, images: list[np.ndarray], names: list[str], min_area: int = 1,
                   boxes: list[tuple[int, int, int, int] | None] | None = None, net=None,
                   shown: list[tuple[int, int]] | None = None) -> np.ndarray:
    """`image_features` for images already decoded (float32 (C, H, W) in [0, 1], as `decode_image_for` gives),
    e.g. uploaded to `simdex serve`; `names` only name them in errors; `net` the catalog's model if loaded;
    `shown` each image's (H, W) as stored when it was decoded smaller (`decode_image_for`)."""
    from simdex.indexer.lite import LiteUNet

    boxes = boxes or [None] * len(images)
    if len(boxes) != len(images):
        raise QueryImageError(f"{len(boxes)} boxes for {len(images)} images")
    if catalog.region == "full" and any(b is not None for b in boxes):
        raise QueryImageError("this catalog pools whole images (region mode 'full'): a box cannot select a region")
    net = query_net(catalog) if net is None else net
    shown = shown or [(im.shape[1], im.shape[2]) for im in images]
    if isinstance(net, LiteUNet):
        return _lite_features(catalog, images, names, min_area, boxes, net, shown)
    return _torch_features(catalog, images, names, min_area, boxes, net, shown)


def _box_region(foreground: np.ndarray, box, image_hw: tuple[int, int], placement: tuple[float, int, int],
                size: int, region_mode: str):
    """A query box's region on the canvas: the box (x0, y0, x1, y1 in canvas pixels) and the pixels it
    pools, (H, W) bool: `mask` catalogs the predicted segment inside the box, or the box where it holds none."""
    scale, top, left = placement
    x0, y0, x1, y1 = box_on_canvas(box, (image_hw[0], image_hw[1], scale, top, left), size)
    inside = np.zeros_like(foreground, dtype=bool)
    inside[y0:y1, x0:x1] = True
    region = inside & foreground if region_mode.startswith("mask") and (inside & foreground).any() else inside
    return (x0, y0, x1, y1), region


def _lite_features(catalog, images, names, min_area, boxes, net, shown) -> np.ndarray:
    from simdex.indexer.lite import largest_object, object_features
    from simdex.indexer.sources import fit_to_size

    size, out = net.config.image_size, []
    for image, path, box, hw in zip(images, names, boxes, shown, strict=True):
        canvas, scale, top, left = fit_to_size(image, size, original_hw=hw)
        logits, acts = net.forward(canvas)
        foreground = logits[1] > logits[0] if logits.shape[0] == 2 else logits.argmax(0) != 0
        if box is None:
            found = largest_object(foreground, min_area)
            if found is None:
                raise QueryImageError(f"the model finds no object in {path}")
            mask, bbox = found
        else:
            bbox, mask = _box_region(foreground, box, hw, (scale, top, left), size, catalog.region)
        out.append(object_features(acts, mask, bbox, catalog.region))
    return np.stack(out).astype(np.float32)


def _torch_features(catalog, images, names, min_area, boxes, net, shown) -> np.ndarray:
    import torch

    from simdex.indexer.extract import Objects, find_objects, object_features
    from simdex.indexer.sources import fit_to_size

    cfg = net.config
    out = []
    for image, path, box, hw in zip(images, names, boxes, shown, strict=True):
        canvas, scale, top, left = fit_to_size(image, cfg.image_size, original_hw=hw)
        with torch.inference_mode():
            logits, acts = net(torch.from_numpy(canvas)[None])
            foreground = logits[:, 1] > logits[:, 0] if logits.shape[1] == 2 else logits.argmax(1) != 0
            if box is None:
                objs = find_objects(foreground, "largest", min_area)
                if len(objs) == 0:
                    raise QueryImageError(f"the model finds no object in {path}")
            else:
                (x0, y0, x1, y1), region = _box_region(foreground[0].numpy(), box, hw, (scale, top, left),
                                                       cfg.image_size, catalog.region)
                region = torch.from_numpy(region)[None]
                one = torch.zeros(1, dtype=torch.long)
                objs = Objects(image_index=one, component=one, bbox=torch.tensor([[x0, y0, x1, y1]]),
                               area=region.sum().reshape(1), label_map=region.long(), label_value=one + 1)
            out.append(object_features(acts, objs, catalog.region).numpy()[0])
    return np.stack(out).astype(np.float32)
