"""Raw feature vectors of new images with a catalog's own model: what `simdex query --image` searches with.

This is the only query path that imports torch. Images are prepared as the indexer
prepares them (decoded, fitted to the model's canvas), segmented by the model, and the
largest object of each image gives one vector of the catalog's N features, with the
catalog's region mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simdex.engine.catalog import Catalog


class QueryImageError(Exception):
    """An image that cannot be turned into a query (unreadable, no object, model missing)."""


def catalog_model(catalog: Catalog):
    """The model the catalog was indexed with, in eval mode; QueryImageError if it is missing or another one."""
    from simdex.indexer.checkpoint import ModelFileError, load_model

    model_path = catalog.info.get("model_path")
    try:
        loaded = load_model(model_path)
    except ModelFileError as exc:
        raise QueryImageError(f"cannot load the catalog's model {model_path}: {exc}") from None
    if loaded.sha256 != catalog.model_sha256:
        raise QueryImageError(f"the model at {model_path} is not the one the catalog was indexed with "
                              f"({loaded.sha256[:12]}… vs {catalog.model_sha256[:12]}…)")
    return loaded.model.eval()


def image_features(catalog: Catalog, paths: list[str | os.PathLike], min_area: int = 1) -> np.ndarray:
    """Features (len(paths), N) float32 of the largest object of each image.

    Raises:
        QueryImageError: the catalog's model file is missing or different, an image cannot be
            decoded, or the model finds no object in it.
    """
    import torch

    from simdex.indexer.extract import find_objects, object_features
    from simdex.indexer.sources import ImageReadError, decode_image, fit_to_size

    net = catalog_model(catalog)
    cfg = net.config
    out = []
    for path in paths:
        try:
            image = decode_image(Path(path), cfg.in_channels)  # (C, H, W)
        except ImageReadError as exc:
            raise QueryImageError(f"cannot read {path}: {exc}") from None
        canvas, _, _, _ = fit_to_size(image, cfg.image_size)
        with torch.inference_mode():
            logits, acts = net(torch.from_numpy(canvas)[None])
            foreground = logits[:, 1] > logits[:, 0] if logits.shape[1] == 2 else logits.argmax(1) != 0
            objs = find_objects(foreground, "largest", min_area)
            if len(objs) == 0:
                raise QueryImageError(f"the model finds no object in {path}")
            out.append(object_features(acts, objs, catalog.region).numpy()[0])
    return np.stack(out).astype(np.float32)
