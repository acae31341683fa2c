"""Augmented views for a self-supervised Ω (DESIGN §4: "without labels, from two augmented views
of one object").

A catalog without labels has no classes to learn Ω from, so `simdex index --views N` takes a
seeded sample of N of the job's images and runs each through the model twice more: as it was
indexed, and in a random pose and colour: rotation (±40°), scale (0.7–1.2), shift (±1/8 of
the canvas), a horizontal flip, a per-channel gain (0.7–1.3) and, for one in five, the
inverted image. (Two augmented views of each image agreed too little to learn from: on the
scenes their held-out mAP was uniform Ω's.) What the canvas uncovers is filled with the colour of its corner (the background). The
largest object of each view gives a row of raw features; the two rows of an image form a
group (`Catalog.write_views`). `simdex build` then fits learned Ω so that an object's other
view ranks first (`engine.omega_learned`, the groups as classes) and keeps it when it beats
uniform Ω on held-out groups: what is stable under pose and colour is weighted up.

Measured on the scenes benchmark without labels (benchmarks/bench_views.py: 8,000 training
scenes, 2,000 of them with views): same-item retrieval of held-out items at P@1 0.222 / mAP
0.133 against 0.121 / 0.068 for uniform Ω, the no-label default before, 0.121 / 0.073 for L2
of z-scores (Ω learned from the training items' labels: 0.351 / 0.291).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from simdex.engine.catalog import Catalog
from simdex.indexer.sources import ImageReadError, ImageSource, fit_to_size

log = logging.getLogger(__name__)

VIEWS_PER_IMAGE = 2
AUTO_VIEWS = 2000  # `--views auto` for a source without labels


def augment(canvases: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """One random view of each canvas (n, C, S, S) float32 in [0, 1] (module docstring)."""
    import torchvision.transforms.v2.functional as TF

    out = np.empty_like(canvases)
    for i, canvas in enumerate(canvases):
        x = torch.from_numpy(np.ascontiguousarray(canvas))
        size = x.shape[1]
        angle = float(torch.empty(1).uniform_(-40, 40, generator=gen))
        scale = float(torch.empty(1).uniform_(0.7, 1.2, generator=gen))
        tx, ty = (int(v) for v in torch.randint(-(size // 8), size // 8 + 1, (2,), generator=gen))
        fill = [float(v) for v in x[:, 0, 0]]
        x = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0],
                      interpolation=TF.InterpolationMode.BILINEAR, fill=fill)
        if torch.rand(1, generator=gen) < 0.5:
            x = TF.horizontal_flip(x)
        x = (x * torch.empty(x.shape[0], 1, 1).uniform_(0.7, 1.3, generator=gen)).clamp(0, 1)
        if torch.rand(1, generator=gen) < 0.2:
            x = 1 - x
        out[i] = x.numpy()
    return out


def _canvases(src: ImageSource, ordinals: np.ndarray, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images fitted to the model's canvas, as indexing fits them; unreadable ones are skipped."""
    out, ok = [], []
    for i in ordinals:
        try:
            canvas = fit_to_size(src.read_for(int(i), channels, size)[0], size)[0]  # as the index job read it
        except (ImageReadError, ValueError, OSError):
            continue
        out.append(canvas)
        ok.append(int(i))
    c = channels
    return (np.stack(out) if out else np.zeros((0, c, size, size), np.float32)), np.asarray(ok, np.int64)


def index_views(src: ImageSource, cat: Catalog, job_id: str, net, options, count: int, end: int,
                seed: int = 0, progress: Callable[[int, int], None] | None = None) -> int:
    """Write the views of a seeded sample of `count` of the images [0, end) (module docstring);
    returns the number of images with all their views. Does nothing when the job has them."""
    from dataclasses import replace

    from simdex.indexer.runner import batch_objects

    if count <= 0 or end <= 0 or cat.views_path(job_id).exists():
        return 0
    rng = np.random.default_rng(seed)
    ordinals = np.sort(rng.choice(end, min(count, end), replace=False))
    gen = torch.Generator().manual_seed(seed)
    opts = replace(options, objects="largest")
    channels, size = net.config.in_channels, net.config.image_size
    groups, feats = [], []
    batch = max(1, min(256, options.batch_size))
    for a in range(0, len(ordinals), batch):
        canvases, ok = _canvases(src, ordinals[a : a + batch], channels, size)
        found = []
        for k in range(VIEWS_PER_IMAGE):
            views = canvases if k == 0 else augment(canvases, gen)  # the image as indexed, then a new pose
            placement = np.tile(np.array([size, size, 1.0, 0, 0], np.float64), (len(ok), 1))
            objs = batch_objects(net, {"canvases": views, "ordinals": ok, "placement": placement, "errors": []}, opts)
            found.append(dict(zip(objs.ordinals.tolist(), objs.features)))
        both = [i for i in ok.tolist() if all(i in f for f in found)]  # a view with no object drops its image
        for i in both:
            for f in found:
                groups.append(i)
                feats.append(f[i])
        if progress:
            progress(min(a + batch, len(ordinals)), len(ordinals))
    if not groups:
        log.warning("no view of the %d sampled images holds an object: no views written", len(ordinals))
        return 0
    cat.write_views(job_id, np.asarray(groups, np.int64), np.stack(feats))
    return len(groups) // VIEWS_PER_IMAGE
