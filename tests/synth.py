"""Seeded synthetic images for tests: bright shapes on a blank background."""

from __future__ import annotations

import numpy as np


def blob_images(n: int, size: int = 32, seed: int = 0, channels: int = 1, background: float = 0.0) -> np.ndarray:
    """n images (n, channels, size, size) float32 in [0, 1], each one filled ellipse or rectangle
    of random position, size and brightness (well above the mask threshold) on `background`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.full((n, channels, size, size), background, np.float32)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        ry, rx = rng.uniform(size * 0.12, size * 0.3, 2)
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        level = rng.uniform(0.5, 1.0, channels)
        texture = rng.uniform(0.85, 1.0, (size, size))
        for c in range(channels):
            out[i, c][inside] = np.abs(background - level[c] * texture[inside])
    return out
