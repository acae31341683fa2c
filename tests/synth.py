"""Seeded synthetic images for tests (bright shapes on a blank background), IDX files of them,
and a U-Net whose segmentation is known exactly."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import torch

from simdex.indexer.model import SparseUNet, UNetConfig


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


def write_idx_gz(path, arr: np.ndarray) -> None:
    """A gzipped IDX file of uint8 `arr` (as Fashion-MNIST ships)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def class_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 images of three classes told apart by shape: wide bars, tall bars, big squares."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = np.zeros((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        y, x = rng.integers(4, 10, 2)
        h, w = [(4, 16), (16, 4), (12, 12)][c]
        images[i, y:y + h, x:x + w] = rng.integers(180, 256)
    return images, labels


def fashion_like_folder(folder, train: int, test: int) -> None:
    """A folder laid out like Fashion-MNIST's (gzipped IDX images and labels, train and t10k)
    holding `class_images` of three classes."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = class_images(n, seed)
        write_idx_gz(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx_gz(folder / f"{stem}-labels-idx1-ubyte.gz", labels)


def controlled_model(seed: int = 0, width: float = 0.125, image_size: int = 32, threshold: float = 0.5) -> SparseUNet:
    """A U-Net whose predicted segment is exactly `input > threshold` (grey input)."""
    torch.manual_seed(seed)
    net = SparseUNet(UNetConfig(width=width, image_size=image_size, in_channels=1))
    skip_at = net.config.level_channels[7]  # C91's input: upsampled C82 first, then C12
    with torch.no_grad():
        for conv, src in ((net.levels[0].conv1, 0), (net.levels[0].conv2, 0),
                          (net.levels[8].conv1, skip_at), (net.levels[8].conv2, 0)):
            conv.weight[0] = 0.0
            conv.weight[0, src, 1, 1] = 1.0  # centre tap: channel 0 carries the input through
            conv.bias[0] = 0.0
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.weight[1, 0] = 10.0
        net.head.bias[1] = -10.0 * threshold
    return net.eval()
