"""Extraction (DESIGN §3): objects from the predicted segment, and each object's
per-layer channel means, for a whole batch at once.

Arrays in, arrays out; no I/O. Two steps:

1. `find_objects(segment)`: connected components (8-connectivity) of the predicted
   foreground, found for the whole batch at once by tree hooking and pointer jumping
   (a few rounds of whole-batch tensor operations; no per-image Python loop). Components are numbered within their image by
   decreasing area (ties: lower pixel index first), so component 0 is the largest.
   `objects='largest'` keeps component 0, `'all'` every component; both drop
   components smaller than `min_area` pixels (at the model's input resolution).
2. `object_features(acts, objects, region)`: for every layer of φ, each object's
   region carried to the layer's resolution, and x_ij = the mean of channel j over it:

   - `bbox` (the paper): the bounding box's centroid and size scaled by
     (layer size / output size), rounded outward (floor of the low edge, ceiling of
     the high edge) so the window holds at least one pixel;
   - `mask`: the segment itself downsampled by area (the fraction of each layer
     pixel covered), as a weighted mean;
   - `full`: the whole map's mean (Appendix B);
   - `grid2`, `grid4` (simdex's, not the paper's): the `bbox` window split into g×g
     cells (row-major; cells of a window narrower than g pixels share pixels), one
     mean per cell and channel, so the object's layout survives pooling
     (benchmarks/bench_quality_pooling.py). Features are ordered layer, cell, channel;
   - `mask+grid2`: the `mask` mean, then the mask's part in each `grid2` cell (an area-weighted
     mean over the object's pixels in the cell; a cell without any takes the whole mask): the
     layout of `grid2` without the background of `bbox`.

   Every mode is one matrix product per layer with the activations (B·h·w, C) — the
   channels_last layout the index job's forward pass leaves them in, so no copy is made. `mask`
   and `mask+gridG` take a sparse (objects·cells, B·h·w) matrix of the mask's fractions, so only
   the objects' pixels are read (an object whose window is too small for its cells to tile it
   takes dense maps alone); the other modes take dense per-object weight maps (B, K, h·w), K the
   most objects of one image, in a batched product. Both give the same means (to float
   rounding; tested).

Bounding boxes are half-open pixel ranges [x0, x1) × [y0, y1) of the model's input.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from simdex.engine.catalog import REGION_MODES, region_cells, region_grid

OBJECT_MODES = ("largest", "all")

_WITHIN_IMAGE = np.zeros((3, 3, 3), bool)
_WITHIN_IMAGE[1] = True  # scipy's structure: 8-connected within an image, never across images of a batch


@dataclass
class Objects:
    """The objects of a batch, M in all, in (image, component) order."""

    image_index: torch.Tensor  # (M,) int64: the object's image within the batch
    component: torch.Tensor  # (M,) int64: 0 = the largest component of its image
    bbox: torch.Tensor  # (M, 4) int64: x0, y0, x1, y1, half-open, in input pixels
    area: torch.Tensor  # (M,) int64: pixels of the component
    label_map: torch.Tensor  # (B, H, W) int64: component label of each pixel, 0 = background
    label_value: torch.Tensor  # (M,) int64: the object's value in label_map

    def __len__(self) -> int:
        return int(self.image_index.numel())

    @property
    def batch_size(self) -> int:
        return int(self.label_map.shape[0])

    def masks(self) -> torch.Tensor:
        """(M, H, W) bool: each object's pixels."""
        return self.label_map[self.image_index] == self.label_value[:, None, None]

    def take(self, index: torch.Tensor) -> Objects:
        """The objects at `index`, of the same batch."""
        return Objects(self.image_index[index], self.component[index], self.bbox[index], self.area[index],
                       self.label_map, self.label_value[index])


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each pixel's 3×3 neighbourhood (borders see only what exists). (B, H, W) → same.

    Separable: a horizontal then a vertical max of three; on integers, faster than max_pool2d.
    """
    row = x.clone()
    row[:, :, 1:] = torch.maximum(row[:, :, 1:], x[:, :, :-1])
    row[:, :, :-1] = torch.maximum(row[:, :, :-1], x[:, :, 1:])
    out = row.clone()
    out[:, 1:] = torch.maximum(out[:, 1:], row[:, :-1])
    out[:, :-1] = torch.maximum(out[:, :-1], row[:, 1:])
    return out


def connected_components(foreground: torch.Tensor) -> torch.Tensor:
    """Label the 8-connected components of a batch of binary images.

    Args:
        foreground: (B, H, W) bool.
    Returns:
        (B, H, W) int64: 0 for background; every pixel of a component holds
        1 + the largest flat index (y·W + x) of the component's pixels.

    Example:
        >>> connected_components(torch.tensor([[[1, 0, 1]]], dtype=torch.bool))
        tensor([[[1, 0, 3]]])
    """
    if foreground.ndim != 3:
        raise ValueError(f"expected (B, H, W), got {tuple(foreground.shape)}")
    if foreground.device.type == "cpu":
        return torch.from_numpy(_component_stats_scipy(foreground.bool().numpy())[0])
    return _components_torch(foreground)


def _components_torch(foreground: torch.Tensor) -> torch.Tensor:
    """`connected_components` in tensor operations, for any device."""
    b, h, w = foreground.shape
    n = h * w
    fg = foreground.bool().reshape(b, n)
    # A forest over each image's pixels: parent[p] >= p, roots point to themselves. Each round
    # hooks every tree's root onto the largest label next to any of its pixels, then jumps
    # pointers to the roots; a few rounds suffice (the rounds shrink trees' count geometrically),
    # where plain label propagation needs as many steps as a component is long.
    parent = torch.arange(n).expand(b, n).clone()  # (B, H·W)
    while True:
        nbr = _max3x3(torch.where(fg, parent, -1).view(b, h, w)).view(b, n)  # 8-neighbourhood max
        nbr = torch.where(fg, nbr, parent)
        if torch.equal(nbr, parent):  # every pixel already holds its neighbours' label
            break
        parent = parent.scatter_reduce(1, parent, nbr, "amax")  # hook roots
        parent = torch.maximum(parent, nbr)
        while True:  # pointer jumping
            hop = torch.gather(parent, 1, parent)
            if torch.equal(hop, parent):
                break
            parent = hop
    return torch.where(fg, parent + 1, 0).view(b, h, w)


def find_objects(segment: torch.Tensor, objects: str = "largest", min_area: int = 1) -> Objects:
    """The objects of a batch of predicted segments.

    Args:
        segment: (B, H, W) bool, the predicted foreground (argmax of the logits != 0).
        objects: 'largest' (one object per image at most, the paper) or 'all'.
        min_area: the smallest component kept, in pixels.
    Returns:
        Objects, sorted by (image, component). An image whose components are all
        smaller than `min_area` has no object.
    """
    if objects not in OBJECT_MODES:
        raise ValueError(f"objects must be one of {', '.join(OBJECT_MODES)}, got {objects!r}")
    if segment.ndim != 3:
        raise ValueError(f"expected (B, H, W), got {tuple(segment.shape)}")
    b = segment.shape[0]
    if segment.device.type == "cpu":
        label_map, comp_img, comp_label, counts, bbox = (
            torch.from_numpy(x) for x in _component_stats_scipy(segment.bool().numpy()))
    else:
        label_map = _components_torch(segment)
        comp_img, comp_label, counts, bbox = _component_stats(label_map)
    # Order by image, then decreasing area, then label (stable, so the result is deterministic).
    order = torch.arange(comp_img.numel())
    for k in (comp_label, -counts, comp_img):  # least significant key first
        order = order[torch.sort(k[order], stable=True).indices]
    comp_img, comp_label, counts, bbox = comp_img[order], comp_label[order], counts[order], bbox[order]
    # Rank of each component within its image.
    first = torch.zeros(b + 1, dtype=torch.long)
    first[1:] = torch.cumsum(torch.bincount(comp_img, minlength=b), 0)
    rank = torch.arange(comp_img.numel()) - first[comp_img]
    keep = counts >= min_area
    if objects == "largest":
        keep &= rank == 0
    # Components are sorted by decreasing area, so the kept ones are each image's first ranks.
    return Objects(image_index=comp_img[keep], component=rank[keep], bbox=bbox[keep], area=counts[keep],
                   label_map=label_map, label_value=comp_label[keep])


def _component_stats(label_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each component of a `connected_components` label map: its image, label, area and bbox
    (x0, y0, x1, y1), in (image, label) order. Linear scatters over one slot per possible
    (image, label), no sort."""
    b, h, w = label_map.shape
    n = h * w
    flat = label_map.view(b, n)
    img, pix = torch.nonzero(flat, as_tuple=True)  # foreground pixels, (P,)
    key = img * (n + 1) + flat[img, pix]  # (P,)
    counts_all = torch.bincount(key, minlength=b * (n + 1))
    slots = torch.nonzero(counts_all, as_tuple=True)[0]  # (C,) the components, in (image, label) order
    c = slots.numel()
    slot_of = torch.full((b * (n + 1),), -1, dtype=torch.long)
    slot_of[slots] = torch.arange(c)
    inverse = slot_of[key]  # (P,) component of each pixel
    ys, xs = pix // w, pix % w
    big = torch.full((c,), n, dtype=torch.long)
    y0 = big.scatter_reduce(0, inverse, ys, "amin")
    x0 = big.scatter_reduce(0, inverse, xs, "amin")
    y1 = torch.zeros(c, dtype=torch.long).scatter_reduce(0, inverse, ys + 1, "amax")
    x1 = torch.zeros(c, dtype=torch.long).scatter_reduce(0, inverse, xs + 1, "amax")
    return slots // (n + 1), slots % (n + 1), counts_all[slots], torch.stack([x0, y0, x1, y1], dim=1)


def _component_stats_scipy(fg: np.ndarray) -> tuple[np.ndarray, ...]:
    """`connected_components` and `_component_stats` at once on the CPU, from scipy's one-pass
    labelling (10× the tensor rounds on a batch of 256 64×64 segments; the statistics taken from its
    labels directly, a third less time than a label map and then the scatters). Returns the label
    map and each component's image, label, area and bbox, in scipy's label order."""
    from scipy import ndimage

    b, h, w = fg.shape
    n = h * w
    labels, count = ndimage.label(fg, structure=_WITHIN_IMAGE)
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)  # foreground pixels, ascending
    lab = flat[where] - 1  # scipy's label − 1 of each
    last = np.zeros(count, np.int64)
    np.maximum.at(last, lab, where)  # each component's largest flat index over the batch
    img, value = last // n, last % n + 1
    ys, xs = where % n // w, where % w
    y0, x0 = np.full(count, h, np.int64), np.full(count, w, np.int64)
    y1, x1 = np.zeros(count, np.int64), np.zeros(count, np.int64)
    np.minimum.at(y0, lab, ys)
    np.minimum.at(x0, lab, xs)
    np.maximum.at(y1, lab, ys + 1)
    np.maximum.at(x1, lab, xs + 1)
    label_map = np.zeros(b * n, np.int64)
    label_map[where] = value[lab]
    return (label_map.reshape(b, h, w), img, value, np.bincount(lab, minlength=count),
            np.stack([x0, y0, x1, y1], axis=1))


def bbox_windows(bbox: torch.Tensor, out_hw: tuple[int, int], layer_hw: tuple[int, int]) -> torch.Tensor:
    """DESIGN §3's window of each box at a layer's resolution. (M, 4) → (M, 4) x0, y0, x1, y1.

    Scaling the centroid and size by r = layer/output is scaling both edges by r;
    rounding outward takes floor(x0·r) and ceil(x1·r), computed exactly in integers.
    """
    (oh, ow), (lh, lw) = out_hw, layer_hw
    x0 = torch.div(bbox[:, 0] * lw, ow, rounding_mode="floor")
    y0 = torch.div(bbox[:, 1] * lh, oh, rounding_mode="floor")
    x1 = -torch.div(-bbox[:, 2] * lw, ow, rounding_mode="floor")
    y1 = -torch.div(-bbox[:, 3] * lh, oh, rounding_mode="floor")
    x0, y0 = x0.clamp(0, lw - 1), y0.clamp(0, lh - 1)
    x1 = torch.maximum(x1.clamp(max=lw), x0 + 1)  # at least one pixel
    y1 = torch.maximum(y1.clamp(max=lh), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def grid_windows(win: torch.Tensor, g: int) -> torch.Tensor:
    """The g×g cells of each window, row-major: (M, 4) → (M·g², 4) x0, y0, x1, y1.

    Cell i of a side of n pixels spans [⌊i·n/g⌋, max(⌊(i+1)·n/g⌋, ⌊i·n/g⌋ + 1)): cells
    tile the window when n ≥ g and still hold one pixel each when n < g.
    """
    i = torch.arange(g)
    w, h = win[:, 2:3] - win[:, 0:1], win[:, 3:4] - win[:, 1:2]  # (M, 1)
    xa = win[:, 0:1] + torch.div(i * w, g, rounding_mode="floor")  # (M, g)
    xb = torch.maximum(win[:, 0:1] + torch.div((i + 1) * w, g, rounding_mode="floor"), xa + 1)
    ya = win[:, 1:2] + torch.div(i * h, g, rounding_mode="floor")
    yb = torch.maximum(win[:, 1:2] + torch.div((i + 1) * h, g, rounding_mode="floor"), ya + 1)
    m = win.shape[0]
    cells = torch.stack([xa[:, None, :].expand(m, g, g), ya[:, :, None].expand(m, g, g),
                         xb[:, None, :].expand(m, g, g), yb[:, :, None].expand(m, g, g)], dim=-1)  # (M, gy, gx, 4)
    return cells.reshape(m * g * g, 4)


def _window_maps(win: torch.Tensor, layer_hw: tuple[int, int]) -> torch.Tensor:
    """(W, h, w) float32 indicators of each window (x0, y0, x1, y1): 1 inside, 0 outside."""
    lh, lw = layer_hw
    xs, ys = torch.arange(lw), torch.arange(lh)
    rx = ((xs >= win[:, 0:1]) & (xs < win[:, 2:3])).float()  # (W, w)
    ry = ((ys >= win[:, 1:2]) & (ys < win[:, 3:4])).float()  # (W, h)
    return ry[:, :, None] * rx[:, None, :]


def _mask_fractions(masks: torch.Tensor, out_hw: tuple[int, int], layer_hw: tuple[int, int],
                    cache: dict | None = None) -> torch.Tensor:
    """(M, h, w) float32: the fraction of each layer pixel that the object's mask covers (the mask
    downsampled by area). `cache` keeps the fractions per size, so a coarser layer pools a finer one's
    (2×2 at a time, the same averages) instead of the full-size masks again."""
    (oh, ow), (lh, lw) = out_hw, layer_hw
    if oh % lh or ow % lw:
        raise ValueError(f"layer size {layer_hw} does not divide the output size {out_hw}")
    cache = {} if cache is None else cache
    if layer_hw not in cache:
        finer = [hw for hw in cache if hw[0] % lh == 0 and hw[1] % lw == 0]
        if finer:
            (fh, fw) = min(finer)
            base = cache[(fh, fw)]
        else:
            (fh, fw), base = out_hw, masks.float()
        cache[layer_hw] = base if (fh, fw) == layer_hw else F.avg_pool2d(base[:, None], (fh // lh, fw // lw))[:, 0]
    return cache[layer_hw]


def region_maps(objects: Objects, region: str, out_hw: tuple[int, int], layer_hw: tuple[int, int],
                masks: torch.Tensor | None, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each object's (and cell's) pooling weights at one resolution, unnormalised, and their sums.

    Returns:
        maps (M, cells, h, w) float32 ≥ 0 and sums (M, cells) float32. A cell's means are
        Σ maps·x / sums. A `mask+gridG` cell that the mask does not reach sums to 0: it takes the
        whole mask's means (cell 0's), as `region_weights` says.
    """
    m, (lh, lw) = len(objects), layer_hw
    if region == "full":
        maps = torch.ones((m, 1, lh, lw))
    elif region == "mask":
        maps = _mask_fractions(masks, out_hw, layer_hw, cache)[:, None]
    elif region == "bbox":
        maps = _window_maps(bbox_windows(objects.bbox, out_hw, layer_hw), layer_hw)[:, None]
    elif region.startswith("grid"):
        cells = grid_windows(bbox_windows(objects.bbox, out_hw, layer_hw), region_grid(region))
        maps = _window_maps(cells, layer_hw).view(m, -1, lh, lw)
    else:  # mask+gridG: the whole mask, then its part in each of the box window's g×g cells
        whole = _mask_fractions(masks, out_hw, layer_hw, cache)  # (M, h, w)
        g = region_grid(region)
        inside = _window_maps(grid_windows(bbox_windows(objects.bbox, out_hw, layer_hw), g), layer_hw)
        maps = torch.empty((m, 1 + g * g, lh, lw))
        maps[:, 0] = whole
        torch.mul(inside.view(m, g * g, lh, lw), whole[:, None], out=maps[:, 1:])
    return maps, maps.sum(dim=(2, 3))


def region_weights(objects: Objects, region: str, out_hw: tuple[int, int], layer_hw: tuple[int, int],
                   masks: torch.Tensor | None) -> torch.Tensor:
    """(M·cells, h, w) float32 weights of each object (and cell) at one resolution; each map sums to 1.

    `bbox`, `gridG`: uniform inside the window; `mask`: the mask's area fractions; `mask+gridG`: the
    mask's, then the mask's part in each cell (a cell the mask does not reach takes the whole mask's
    weights, so its means equal the object's); `full`: uniform."""
    maps, sums = region_maps(objects, region, out_hw, layer_hw, masks)
    weights = maps / sums.clamp(min=1e-30)[:, :, None, None]
    empty = sums == 0  # only mask+gridG cells: take the whole mask's
    if bool(empty.any()):
        weights = torch.where(empty[:, :, None, None], weights[:, :1], weights)
    return weights.reshape(-1, *layer_hw)


@dataclass
class _Pooling:
    """How `object_features` pools the layers of one resolution: `product(hwc)` gives the (M, cells, C)
    weighted sums of the (B·h·w, C) activations, `sums` (M, cells, 1) the weights' sums (clamped above
    0), `empty` (M, cells) the mask+gridG cells the mask does not reach, or None."""

    product: Callable[[torch.Tensor], torch.Tensor]
    sums: torch.Tensor
    empty: torch.Tensor | None


def _tiling(win: torch.Tensor, g: int) -> torch.Tensor:
    """(M,) bool: the objects whose window (`bbox_windows`, (M, 4)) is at least g pixels a side, so
    that its g×g cells tile it, each pixel in exactly one cell (`grid_windows`)."""
    return (win[:, 2] - win[:, 0] >= g) & (win[:, 3] - win[:, 1] >= g)


def _cell_matrix(objects: Objects, g: int, out_hw: tuple[int, int], layer_hw: tuple[int, int],
                 masks: torch.Tensor, cache: dict, win: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of `mask` (g = 1) or of tiled `mask+gridG` cells at one resolution as one sparse CSR
    matrix (g²·M, B·h·w): row c·M + m holds object m's mask fractions inside its cell c, at the columns
    of its image's pixels; the rows of objects not in `keep` (M,) are empty. `win`: the objects' windows
    at this resolution (`bbox_windows`). Returns the matrix and the (M, g²) sums of its rows.

    A mask covers a fraction of the layer (a fifth of a 64×64 scene), so the product reads only the
    pixels that count, not every pixel of every map. Needs tiling cells (`_tiling`): a pixel x of a
    window [x0, x0 + n) is then in the one cell i with ⌊i·n/g⌋ ≤ x − x0 < ⌊(i+1)·n/g⌋, that is
    i = ⌊((x − x0 + 1)·g − 1) / n⌋."""
    m, b, (lh, lw) = len(objects), objects.batch_size, layer_hw
    n = lh * lw
    fractions = _mask_fractions(masks, out_hw, layer_hw, cache).reshape(-1)  # (M·h·w,)
    at = fractions.nonzero().squeeze(1)  # the objects' pixels, in (object, pixel) order
    obj = at // n
    if not bool(keep.all()):
        kept = keep[obj]
        at, obj = at[kept], obj[kept]
    weight, image = fractions[at], objects.image_index
    columns = at if torch.equal(image, torch.arange(b)) else at + (image[obj] - obj) * n  # image's pixel
    key, weight_sorted = obj, weight
    if g > 1:
        col = torch.div((torch.arange(lw) - win[:, 0:1] + 1) * g - 1, win[:, 2:3] - win[:, 0:1],
                        rounding_mode="floor").clamp_(0, g - 1).to(torch.uint8)  # (M, w): cell column of x
        row = torch.div((torch.arange(lh) - win[:, 1:2] + 1) * g - 1, win[:, 3:4] - win[:, 1:2],
                        rounding_mode="floor").clamp_(0, g - 1).to(torch.uint8)  # (M, h)
        cell = (row[:, :, None] * g + col[:, None, :]).reshape(-1)[at]  # (P,) uint8
        key = cell.long() * m + obj  # the pixel's row of the matrix
        # rows in (cell, object) order: a stable sort by cell keeps each cell's pixels in object order
        order = torch.from_numpy(np.argsort(cell.numpy(), kind="stable"))
        columns, weight_sorted = columns[order], weight[order]
    crow = torch.zeros(g * g * m + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(key, minlength=g * g * m), 0, out=crow[1:])
    with warnings.catch_warnings():  # built sorted and in range: no invariant checks, no beta notice
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(crow, columns, weight_sorted, size=(g * g * m, b * n),
                                         check_invariants=False)
    sums = torch.zeros(g * g * m, dtype=torch.float32).index_add_(0, key, weight)
    return matrix, sums.view(g * g, m).t()


def _pooling(objects: Objects, region: str, out_hw: tuple[int, int], layer_hw: tuple[int, int],
             masks: torch.Tensor | None, cache: dict, one_each: bool) -> _Pooling:
    """The weights of one resolution. `mask` and `mask+gridG`: a sparse matrix (`_cell_matrix`; the
    whole mask's sums are its cells'), and for the objects whose window is too small for G cells to
    tile it (a thin or tiny object at a coarse layer) the dense maps of `region_maps`. The other regions:
    dense maps in a batched product, each image's objects in slots of a (B, K, h·w)."""
    m, b, (lh, lw) = len(objects), objects.batch_size, layer_hw
    n = lh * lw
    g = 1 if region == "mask" else region_grid(region) if region.startswith("mask+grid") else 0
    if g:
        win = bbox_windows(objects.bbox, out_hw, layer_hw)
        tiled = _tiling(win, g)
        matrix, sums = _cell_matrix(objects, g, out_hw, layer_hw, masks, cache, win, tiled)  # (g²·M, B·h·w), (M, g²)
        if g > 1:
            sums = torch.cat([sums.sum(dim=1, keepdim=True), sums], dim=1)
        rest = (~tiled).nonzero().squeeze(1)
        if len(rest):
            few = objects.take(rest)
            maps = region_maps(few, region, out_hw, layer_hw, masks[rest])[0].reshape(len(rest), -1, n)
            sums[rest] = maps.sum(dim=2)

        def product(hwc: torch.Tensor) -> torch.Tensor:
            cells = (matrix @ hwc).view(g * g, m, -1).transpose(0, 1)  # (M, g², C)
            if g > 1:
                cells = torch.cat([cells.sum(dim=1, keepdim=True), cells], dim=1)
            if len(rest):
                cells[rest] = torch.bmm(maps, hwc.view(b, n, -1)[few.image_index])
            return cells
    else:
        maps = region_maps(objects, region, out_hw, layer_hw, masks, cache)[0]  # (M, cells, h, w)
        p = maps.shape[1]
        where = None  # one object per image: the maps are the slots already
        if one_each:
            padded = maps.reshape(b, p, n)
        else:
            slot = objects.component[:, None] * p + torch.arange(p)  # (M, p): weight-map slot in its image
            image = objects.image_index[:, None].expand(m, p)
            padded = torch.zeros((b, (int(objects.component.max()) + 1) * p, n), dtype=torch.float32)
            padded[image.reshape(-1), slot.reshape(-1)] = maps.reshape(m * p, n)
            where = (image, slot)

        def product(hwc: torch.Tensor) -> torch.Tensor:
            per_image = torch.bmm(padded, hwc.view(b, n, -1))  # (B, K, C) weighted sums
            return per_image if where is None else per_image[where]  # (M, p, C)

        sums = maps.sum(dim=(2, 3))
    empty = sums == 0
    return _Pooling(product, sums.clamp(min=1e-30)[:, :, None], empty if bool(empty.any()) else None)


def object_features(acts: list[torch.Tensor], objects: Objects, region: str = "bbox",
                    out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-object, per-layer channel means: the raw vectors v_i.

    Args:
        acts: φ's activation maps in feature order, each (B, C_l, h_l, w_l).
        objects: from `find_objects` on the same batch.
        region: one of REGION_MODES ('bbox', 'mask', 'full', 'grid2', 'grid4', 'mask+grid2').
        out_hw: the output (segment) size; defaults to the label map's.
    Returns:
        (M, N) float32, N = Σ C_l (times the region's cells), rows in the order of `objects`.

    The weighted sums are taken with `region_maps`' unnormalised maps and divided by the maps' sums
    afterwards, on the (M, cells, C) means rather than on the (M, cells, h, w) maps.
    """
    if region not in REGION_MODES:
        raise ValueError(f"region must be one of {', '.join(REGION_MODES)}, got {region!r}")
    out_hw = tuple(out_hw or objects.label_map.shape[1:])
    m, b = len(objects), objects.batch_size
    cells = region_cells(region)
    n_features = sum(a.shape[1] for a in acts) * cells
    if m == 0:
        return torch.zeros((0, n_features), dtype=torch.float32)
    # one object per image, in image order (the index job's `largest`): the maps are the slots already
    one_each = m == b and bool(torch.equal(objects.image_index, torch.arange(b)))
    masks = objects.masks() if region.startswith("mask") else None
    fractions: dict = {}
    pooling: dict[tuple[int, int], _Pooling] = {}
    out = []
    for a in acts:
        _, ch, lh, lw = a.shape
        if region == "full":
            out.append(a.float().mean(dim=(2, 3))[objects.image_index])  # (M, C)
            continue
        if (lh, lw) not in pooling:  # layers of one resolution share their weights
            pooling[(lh, lw)] = _pooling(objects, region, out_hw, (lh, lw), masks, fractions, one_each)
        pool = pooling[(lh, lw)]
        # (B·h·w, C): a view of the channels_last maps the index job makes (a copy of NCHW ones)
        weighted = pool.product(a.float().permute(0, 2, 3, 1).reshape(b * lh * lw, ch))  # (M, cells, C)
        means = weighted / pool.sums  # (M, cells, C)
        if pool.empty is not None:  # mask+gridG cells the mask does not reach: the whole mask's means
            means = torch.where(pool.empty[:, :, None], means[:, :1], means)
        out.append(means.reshape(m, cells * ch))  # cell-major
    return torch.cat(out, dim=1)
