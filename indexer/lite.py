"""The U-Net's forward pass and the extraction of one query image in numpy: `simdex query --image`
without importing torch.

Importing torch costs ~3 s of a CLI process that otherwise takes well under a second
(benchmarks/bench_cli_query.py), for one forward pass of a 64×64 image that numpy's BLAS
does in milliseconds. So the weights of a catalog's U-Net are exported once, as plain
arrays, to `$XDG_CACHE_HOME/simdex/lite/<model sha256>.npz` — by `simdex index` (which has
torch loaded anyway) or by the first query that needs them — and later queries run this
module instead of torch.

What it computes is `indexer.extract` for one image: the same forward pass (3×3
convolutions with ReLU, max-pooling, nearest upsampling, skips, the 1×1 head), the same
connected components (8-connectivity, each labelled 1 + its largest flat pixel index,
the largest kept, ties to the lower label) and the same region weights (bbox, mask,
full, gridG); tests/test_lite.py checks the features against the torch path for every
region mode and for boxes. torchvision backbones are not covered: they keep torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from simdex.engine.catalog import REGION_MODES, region_grid

FORMAT = "simdex-lite/1"
SKIP_FROM = {6: 4, 7: 3, 8: 2, 9: 1}  # as indexer.model: decoder level ← encoder level


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simdex" / "lite"


def lite_path(model_sha256: str) -> Path:
    return cache_dir() / f"{model_sha256}.npz"


def _digest(header: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class LiteUNet:
    """A SparseUNet's weights as float32 arrays, run on one image at a time."""

    def __init__(self, config: dict, arrays: dict[str, np.ndarray], model_sha256: str):
        self.config_dict, self.model_sha256 = dict(config), model_sha256
        self.config = SimpleNamespace(**config)  # .in_channels, .image_size … as SparseUNet.config
        self.levels = [(arrays[f"levels.{i}.conv1.weight"], arrays[f"levels.{i}.conv1.bias"],
                        arrays[f"levels.{i}.conv2.weight"], arrays[f"levels.{i}.conv2.bias"]) for i in range(9)]
        self.head = (arrays["head.weight"], arrays["head.bias"])

    @classmethod
    def from_torch(cls, model, model_sha256: str) -> LiteUNet:
        state = {k: v.detach().cpu().float().contiguous().numpy() for k, v in model.state_dict().items()}
        return cls(model.config.to_dict(), state, model_sha256)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"head.weight": self.head[0], "head.bias": self.head[1]}
        for i, (w1, b1, w2, b2) in enumerate(self.levels):
            out.update({f"levels.{i}.conv1.weight": w1, f"levels.{i}.conv1.bias": b1,
                        f"levels.{i}.conv2.weight": w2, f"levels.{i}.conv2.bias": b2})
        return out

    def save(self, path: Path) -> Path:
        """Write atomically (a half-written cache file is never read)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"format": FORMAT, "config": self.config_dict, "model_sha256": self.model_sha256})
        arrays = self.arrays()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, header=np.array(header), digest=np.array(_digest(header, arrays)), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path, model_sha256: str) -> LiteUNet | None:
        """The export at `path` if it is intact and of that model, else None (the caller re-exports)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                header, digest = str(f["header"]), str(f["digest"])
                arrays = {k: f[k] for k in f.files if k not in ("header", "digest")}
            meta = json.loads(header)
            if meta.get("format") != FORMAT or meta.get("model_sha256") != model_sha256:
                return None
            if _digest(header, arrays) != digest:
                return None
            return cls(meta["config"], arrays, model_sha256)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """x (C, H, W) float32 → logits (K, H, W) and φ's 18 maps (C_l, h_l, w_l), as SparseUNet.forward."""
        acts, outs, h = [], {}, np.asarray(x, dtype=np.float32)
        for level, (w1, b1, w2, b2) in enumerate(self.levels, start=1):
            if level in (2, 3, 4):
                c, hh, ww = h.shape
                h = h.reshape(c, hh // 2, 2, ww // 2, 2).max(axis=(2, 4))
            elif level in (7, 8, 9):
                h = h.repeat(2, axis=1).repeat(2, axis=2)
            if level >= 6:
                h = np.concatenate([h, outs[SKIP_FROM[level]]], axis=0)
            a1 = _relu_conv3x3(h, w1, b1)
            h = _relu_conv3x3(a1, w2, b2)
            acts.extend((a1, h))
            outs[level] = h
        w, b = self.head
        c, hh, ww = h.shape
        logits = (w.reshape(w.shape[0], c) @ h.reshape(c, hh * ww) + b[:, None]).reshape(-1, hh, ww)
        return logits, acts


def _relu_conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """ReLU(conv2d(x, weight, bias, padding=1)) for one image, by im2col and one matrix product."""
    c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # (C, H, W, 3, 3)
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(c * 9, h * w)  # row c·9 + ky·3 + kx, as weight's layout
    out = weight.reshape(weight.shape[0], c * 9) @ cols
    out += bias[:, None]
    np.maximum(out, 0, out=out)
    return out.reshape(-1, h, w)


def export(model, model_sha256: str) -> Path | None:
    """Write the lite export of a loaded SparseUNet for later torch-free queries (best effort:
    None where the cache cannot be written, or for a model that is not the U-Net)."""
    if getattr(getattr(model, "config", None), "arch", None) != "unet":
        return None
    path = lite_path(model_sha256)
    try:
        if path.is_file() and LiteUNet.load(path, model_sha256) is not None:
            return path
        return LiteUNet.from_torch(model, model_sha256).save(path)
    except OSError:
        return None


# ---------------------------------------------------------------------- extraction of one object


def _max3x3(x: np.ndarray) -> np.ndarray:
    row = x.copy()
    row[:, 1:] = np.maximum(row[:, 1:], x[:, :-1])
    row[:, :-1] = np.maximum(row[:, :-1], x[:, 1:])
    out = row.copy()
    out[1:] = np.maximum(out[1:], row[:-1])
    out[:-1] = np.maximum(out[:-1], row[1:])
    return out


def connected_components(foreground: np.ndarray) -> np.ndarray:
    """(H, W) bool → (H, W) int64 labels: 0 background, else 1 + the largest flat index of the
    component (indexer.extract.connected_components for one image: hooking and pointer jumping)."""
    h, w = foreground.shape
    n = h * w
    fg = foreground.reshape(n)
    parent = np.arange(n)
    while True:
        nbr = _max3x3(np.where(fg, parent, -1).reshape(h, w)).reshape(n)
        nbr = np.where(fg, nbr, parent)
        if np.array_equal(nbr, parent):
            break
        hooked = parent.copy()
        np.maximum.at(hooked, parent, nbr)
        parent = np.maximum(hooked, nbr)
        while True:
            hop = parent[parent]
            if np.array_equal(hop, parent):
                break
            parent = hop
    return np.where(fg, parent + 1, 0).reshape(h, w)


def largest_object(foreground: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The largest 8-connected component (ties: the lower label) as (mask (H, W), bbox x0, y0, x1, y1),
    or None when there is none of `min_area` pixels."""
    labels = connected_components(foreground)
    flat = labels.ravel()
    values, counts = np.unique(flat[flat > 0], return_counts=True)
    if len(values) == 0:
        return None
    best = np.lexsort((values, -counts))[0]
    if counts[best] < min_area:
        return None
    mask = labels == values[best]
    ys, xs = np.nonzero(mask)
    return mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def bbox_window(bbox, out_hw, layer_hw) -> tuple[int, int, int, int]:
    """indexer.extract.bbox_windows for one box."""
    (oh, ow), (lh, lw) = out_hw, layer_hw
    x0, y0 = bbox[0] * lw // ow, bbox[1] * lh // oh  # Python's // floors, as torch's rounding_mode="floor"
    x1, y1 = -(-bbox[2] * lw // ow), -(-bbox[3] * lh // oh)
    x0, y0 = min(max(x0, 0), lw - 1), min(max(y0, 0), lh - 1)
    return x0, y0, max(min(x1, lw), x0 + 1), max(min(y1, lh), y0 + 1)


def grid_cells(win, g: int) -> list[tuple[int, int, int, int]]:
    """indexer.extract.grid_windows for one window: g×g cells, row-major."""
    w, h = win[2] - win[0], win[3] - win[1]
    xs = [(win[0] + i * w // g, max(win[0] + (i + 1) * w // g, win[0] + i * w // g + 1)) for i in range(g)]
    ys = [(win[1] + i * h // g, max(win[1] + (i + 1) * h // g, win[1] + i * h // g + 1)) for i in range(g)]
    return [(xa, ya, xb, yb) for ya, yb in ys for xa, xb in xs]


def _window_weight(win, layer_hw) -> np.ndarray:
    out = np.zeros(layer_hw, np.float32)
    x0, y0, x1, y1 = win
    out[y0:y1, x0:x1] = 1.0 / ((x1 - x0) * (y1 - y0))
    return out


def region_weights(mask: np.ndarray, bbox, region: str, layer_hw: tuple[int, int]) -> np.ndarray:
    """(cells, h, w) weights of one object at one resolution, each summing to 1 (extract.region_weights)."""
    out_hw = mask.shape
    if region.startswith("mask+"):  # extract._mask_grid_weights
        whole = region_weights(mask, bbox, "mask", layer_hw)  # (1, h, w)
        inside = region_weights(mask, bbox, f"grid{region_grid(region)}", layer_hw) > 0  # (g², h, w)
        part = whole * inside
        total = part.sum(axis=(1, 2), keepdims=True)
        part = np.where(total > 0, part / np.maximum(total, 1e-30), whole)
        return np.concatenate([whole, part]).astype(np.float32)
    if region.startswith("grid"):
        return np.stack([_window_weight(c, layer_hw) for c in grid_cells(bbox_window(bbox, out_hw, layer_hw),
                                                                          region_grid(region))])
    if region == "bbox":
        return _window_weight(bbox_window(bbox, out_hw, layer_hw), layer_hw)[None]
    if region == "mask":
        (oh, ow), (lh, lw) = out_hw, layer_hw
        frac = mask.astype(np.float32).reshape(lh, oh // lh, lw, ow // lw).mean(axis=(1, 3))
        return (frac / frac.sum())[None]
    return np.full((1, *layer_hw), 1.0 / (layer_hw[0] * layer_hw[1]), np.float32)


def object_features(acts: list[np.ndarray], mask: np.ndarray, bbox, region: str) -> np.ndarray:
    """The raw vector (N,) of one object: per layer, cell-major, the channel means over its region."""
    if region not in REGION_MODES:
        raise ValueError(f"region must be one of {', '.join(REGION_MODES)}, got {region!r}")
    out, weights = [], {}
    for a in acts:
        c, lh, lw = a.shape
        if region == "full":
            out.append(a.mean(axis=(1, 2), dtype=np.float64).astype(np.float32))
            continue
        if (lh, lw) not in weights:
            weights[(lh, lw)] = region_weights(mask, bbox, region, (lh, lw)).reshape(-1, lh * lw)
        wts = weights[(lh, lw)]  # (cells, h·w)
        out.append((wts @ a.reshape(c, lh * lw).T).reshape(-1))  # (cells, C) → cell-major
    return np.concatenate(out).astype(np.float32)
