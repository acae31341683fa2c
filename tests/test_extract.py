"""The vectorised extraction equals slow, obvious references (loops over objects, layers,
channels; a flood fill for components) on seeded random multi-object images."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch

from simdex.indexer import extract
from simdex.indexer.extract import bbox_windows, connected_components, find_objects, grid_windows, object_features
from simdex.indexer.model import SparseUNet, UNetConfig

# ----------------------------------------------------------------------------- references


def flood_fill_components(fg: np.ndarray) -> list[dict]:
    """8-connected components of one (H, W) bool image by breadth-first search."""
    h, w = fg.shape
    seen = np.zeros_like(fg, dtype=bool)
    comps = []
    for y in range(h):
        for x in range(w):
            if not fg[y, x] or seen[y, x]:
                continue
            pixels, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            mask = np.zeros_like(fg, dtype=bool)
            for py, px in pixels:
                mask[py, px] = True
            ys, xs = zip(*pixels, strict=True)
            comps.append({"mask": mask, "area": len(pixels), "bbox": (min(xs), min(ys), max(xs) + 1, max(ys) + 1),
                          "max_index": max(py * w + px for py, px in pixels)})
    # Largest first, ties broken by the lower label (= max flat index), as find_objects does.
    comps.sort(key=lambda c: (-c["area"], c["max_index"]))
    return comps


def reference_features(acts: list[np.ndarray], mask: np.ndarray, bbox, region: str) -> np.ndarray:
    """One object's vector, written from DESIGN §3 with loops over layers and channels (float64)."""
    out_h, out_w = mask.shape
    x0, y0, x1, y1 = bbox
    values = []
    for a in acts:  # a: (C, h, w) of this object's image
        c, h, w = a.shape
        frac = None
        if region in ("mask", "mask+grid2"):
            sy, sx = out_h // h, out_w // w
            frac = np.zeros((h, w))
            for i in range(h):
                for k in range(w):
                    frac[i, k] = mask[i * sy:(i + 1) * sy, k * sx:(k + 1) * sx].mean()
            for j in range(c):
                values.append((a[j].astype(np.float64) * frac).sum() / frac.sum())
        if region in ("bbox", "grid2", "grid4", "mask+grid2"):
            # Centroid and size scaled by layer size / output size, window rounded outward.
            rx, ry = w / out_w, h / out_h
            cx, cy = (x0 + x1) / 2 * rx, (y0 + y1) / 2 * ry
            bw, bh = (x1 - x0) * rx, (y1 - y0) * ry
            lx0, lx1 = math.floor(cx - bw / 2), math.ceil(cx + bw / 2)
            ly0, ly1 = math.floor(cy - bh / 2), math.ceil(cy + bh / 2)
            lx0, ly0 = max(0, min(lx0, w - 1)), max(0, min(ly0, h - 1))
            lx1, ly1 = max(lx0 + 1, min(lx1, w)), max(ly0 + 1, min(ly1, h))
            g = 1 if region == "bbox" else int(region[-1])
            for r in range(g):  # cells row by row; cell i of n pixels: [⌊i·n/g⌋, ⌊(i+1)·n/g⌋), ≥ 1 pixel
                for q in range(g):
                    cy0 = ly0 + (r * (ly1 - ly0)) // g
                    cy1 = max(ly0 + ((r + 1) * (ly1 - ly0)) // g, cy0 + 1)
                    cx0 = lx0 + (q * (lx1 - lx0)) // g
                    cx1 = max(lx0 + ((q + 1) * (lx1 - lx0)) // g, cx0 + 1)
                    for j in range(c):
                        if frac is None:
                            values.append(a[j, cy0:cy1, cx0:cx1].astype(np.float64).mean())
                            continue
                        part = frac[cy0:cy1, cx0:cx1]  # mask+grid: the mask's part in the cell
                        if part.sum() > 0:
                            values.append((a[j, cy0:cy1, cx0:cx1].astype(np.float64) * part).sum() / part.sum())
                        else:  # the mask does not reach the cell: the whole mask's mean
                            values.append((a[j].astype(np.float64) * frac).sum() / frac.sum())
        elif region not in ("mask", "mask+grid2"):
            for j in range(c):
                values.append(a[j].astype(np.float64).mean())
    return np.array(values)


# ----------------------------------------------------------------------------- data


def random_segments(rng: np.random.Generator, b: int, h: int, w: int) -> np.ndarray:
    """Blobs (ellipses and rectangles) of random sizes, some touching, plus speckle."""
    seg = np.zeros((b, h, w), dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(b):
        for _ in range(rng.integers(0, 5)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(1, h / 4), rng.uniform(1, w / 4)
            if rng.random() < 0.5:
                seg[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                seg[i] |= (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        seg[i] |= rng.random((h, w)) < 0.02
    seg[0] = False  # an empty image
    seg[1] = True  # a full one
    return seg


# ----------------------------------------------------------------------------- tests


def test_connected_components_matches_flood_fill():
    rng = np.random.default_rng(1338)
    seg = random_segments(rng, 24, 24, 40)
    seg[2] = False
    seg[2, np.arange(24), np.arange(24)] = True  # a diagonal line: one 8-connected component
    # A spiral-like snake that needs many propagation steps.
    seg[3] = False
    seg[3, 1, 1:39] = seg[3, 1:23, 38] = seg[3, 22, 2:39] = seg[3, 3:23, 2] = seg[3, 3, 2:36] = True
    labels = connected_components(torch.from_numpy(seg)).numpy()
    for i in range(len(seg)):
        comps = flood_fill_components(seg[i])
        assert len(np.unique(labels[i][seg[i]])) == len(comps)
        assert (labels[i][~seg[i]] == 0).all()
        for c in comps:
            values = np.unique(labels[i][c["mask"]])
            assert values.tolist() == [c["max_index"] + 1]
    assert len(np.unique(labels[2][seg[2]])) == 1
    assert len(np.unique(labels[3][seg[3]])) == 1


def test_connected_components_cpu_and_tensor_paths_agree():
    """The CPU path (scipy's labelling) and the tensor path other devices run give the same labels."""
    from simdex.indexer.extract import _components_torch

    rng = np.random.default_rng(5)
    seg = random_segments(rng, 12, 20, 28)
    seg[2] = False
    seg[2, np.arange(20), np.arange(20)] = True
    seg[3, :, ::2] = False  # columns that touch only diagonally
    np.testing.assert_array_equal(connected_components(torch.from_numpy(seg)).numpy(),
                                  _components_torch(torch.from_numpy(seg)).numpy())
    assert connected_components(torch.zeros(0, 8, 8, dtype=torch.bool)).shape == (0, 8, 8)


def test_component_stats_cpu_and_tensor_paths_agree():
    """find_objects' CPU statistics (from scipy's labels, without relabelling) equal the tensor path's."""
    from simdex.indexer.extract import _component_stats, _component_stats_scipy, _components_torch

    rng = np.random.default_rng(8)
    seg = random_segments(rng, 10, 18, 23)
    seg[4] = False  # an image without any component
    seg[5] = True  # one component that fills the image
    label_map, *stats = _component_stats_scipy(seg)
    want_map = _components_torch(torch.from_numpy(seg))
    np.testing.assert_array_equal(label_map, want_map.numpy())
    order = np.lexsort((stats[1], stats[0]))  # scipy's label order → (image, label) order
    for got, want in zip(stats, _component_stats(want_map)):
        np.testing.assert_array_equal(got[order], want.numpy())


@pytest.mark.parametrize("mode,min_area", [("largest", 1), ("all", 1), ("all", 6), ("largest", 30)])
def test_find_objects_matches_flood_fill(mode, min_area):
    rng = np.random.default_rng(7)
    seg = random_segments(rng, 16, 32, 32)
    objs = find_objects(torch.from_numpy(seg), mode, min_area)
    expected = []
    for i in range(len(seg)):
        comps = [c for c in flood_fill_components(seg[i]) if c["area"] >= min_area]
        if mode == "largest":
            comps = comps[:1]
        expected += [(i, k, c["bbox"], c["area"]) for k, c in enumerate(comps)]
    got = [(int(i), int(k), tuple(int(v) for v in bb), int(a))
           for i, k, bb, a in zip(objs.image_index, objs.component, objs.bbox, objs.area, strict=True)]
    assert got == expected
    masks = objs.masks().numpy()
    for (i, k, _, area), mask in zip(expected, masks, strict=True):
        assert mask.sum() == area and seg[i][mask].all()
        assert k >= 0


def test_bbox_window_rule_examples():
    # A 2-pixel box at x 5..7 of 32: at stride 8 it is 5/8..7/8 → pixel 0 only; at stride 2, 2..4.
    bbox = torch.tensor([[5, 0, 7, 32]])
    assert bbox_windows(bbox, (32, 32), (4, 4)).tolist() == [[0, 0, 1, 4]]
    assert bbox_windows(bbox, (32, 32), (16, 16)).tolist() == [[2, 0, 4, 16]]
    assert bbox_windows(torch.tensor([[31, 31, 32, 32]]), (32, 32), (4, 4)).tolist() == [[3, 3, 4, 4]]


@pytest.mark.parametrize("region", ["bbox", "mask", "full", "grid2", "grid4", "mask+grid2"])
@pytest.mark.parametrize("mode", ["all", "largest"])
def test_object_features_match_reference(region, mode):
    rng = np.random.default_rng(2024)
    b, h, w = 10, 32, 48
    seg = random_segments(rng, b, h, w)
    objs = find_objects(torch.from_numpy(seg), mode, min_area=2)
    if mode == "all":
        assert len(objs) > 2 * b  # many images hold several objects
    else:  # one object per image, but image 0 is empty
        assert objs.image_index.tolist() == list(range(1, b)) and objs.component.max() == 0
    # Random activation maps at the U-Net's strides (some exactly zero, like ReLU outputs).
    acts = []
    for stride, ch in [(1, 3), (2, 4), (4, 2), (8, 5), (8, 1), (2, 3)]:
        a = rng.standard_normal((b, ch, h // stride, w // stride)).astype(np.float32)
        acts.append(np.maximum(a, 0))
    got = object_features([torch.from_numpy(a) for a in acts], objs, region).numpy()
    cells = {"grid2": 4, "grid4": 16, "mask+grid2": 5}.get(region, 1)
    assert got.shape == (len(objs), cells * sum(a.shape[1] for a in acts))
    masks = objs.masks().numpy()
    for row, (i, bb, mask) in enumerate(zip(objs.image_index.tolist(), objs.bbox.tolist(), masks, strict=True)):
        ref = reference_features([a[i] for a in acts], mask, bb, region)
        np.testing.assert_allclose(got[row], ref, rtol=0, atol=1e-5)


def test_bbox_and_mask_agree_for_a_rectangle():
    """A filled rectangle aligned to the coarsest grid: its mask is its box at every layer."""
    seg = np.zeros((1, 32, 32), dtype=bool)
    seg[0, 8:24, 16:32] = True
    objs = find_objects(torch.from_numpy(seg))
    model = SparseUNet(UNetConfig(width=0.25))
    with torch.inference_mode():
        _, acts = model(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
        fb = object_features(acts, objs, "bbox")
        fm = object_features(acts, objs, "mask")
        ff = object_features(acts, objs, "full")
    assert fb.shape == (1, model.num_features)
    torch.testing.assert_close(fb, fm, rtol=0, atol=1e-6)
    assert not torch.allclose(fb, ff)


def test_grid_cells_tile_the_window_and_average_back_to_the_box():
    assert grid_windows(torch.tensor([[2, 0, 6, 3]]), 2).tolist() == [[2, 0, 4, 1], [4, 0, 6, 1],
                                                                      [2, 1, 4, 3], [4, 1, 6, 3]]
    # a window one pixel wide: every cell is that pixel
    assert grid_windows(torch.tensor([[5, 5, 6, 6]]), 2).tolist() == [[5, 5, 6, 6]] * 4
    seg = np.zeros((1, 32, 32), dtype=bool)
    seg[0, 8:24, 0:32] = True  # a box that divides evenly into 4×4 cells at every layer
    objs = find_objects(torch.from_numpy(seg))
    acts = [torch.rand(1, 3, 32 // s, 32 // s, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 4, 8)]
    box = object_features(acts, objs, "bbox")
    for region, cells in (("grid2", 4), ("grid4", 16)):
        grid = object_features(acts, objs, region)  # layer, cell, channel
        for i in range(len(acts)):  # 3 channels per layer
            cell_means = grid[0, i * cells * 3:(i + 1) * cells * 3].reshape(cells, 3)
            torch.testing.assert_close(cell_means.mean(0), box[0, i * 3:(i + 1) * 3], rtol=0, atol=1e-6)


def test_no_objects():
    objs = find_objects(torch.zeros(3, 16, 16, dtype=torch.bool))
    assert len(objs) == 0
    feats = object_features([torch.rand(3, 4, 16, 16)], objs, "bbox")
    assert feats.shape == (0, 4)


def test_bad_modes():
    with pytest.raises(ValueError, match="objects must be"):
        find_objects(torch.zeros(1, 8, 8, dtype=torch.bool), "biggest")
    objs = find_objects(torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="region must be"):
        object_features([torch.rand(1, 2, 8, 8)], objs, "box")


@pytest.mark.parametrize("region", ["bbox", "mask", "grid2", "mask+grid2"])
def test_one_object_per_image_gives_the_general_path_features(region):
    """With one object in every image (the index job's usual batch) the maps are the bmm's slots
    directly; the same objects beside an empty image go through the scatter: equal features."""
    rng = np.random.default_rng(7)
    seg = random_segments(rng, 6, 32, 32)
    seg[0, 10:14, 3:9] = True  # every image holds an object
    acts = [np.maximum(rng.standard_normal((6, ch, 32 // s, 32 // s)).astype(np.float32), 0)
            for s, ch in [(1, 3), (2, 4), (8, 2)]]
    objs = find_objects(torch.from_numpy(seg), "largest")
    assert objs.image_index.tolist() == list(range(6))
    fast = object_features([torch.from_numpy(a) for a in acts], objs, region)
    padded = np.concatenate([np.zeros_like(seg[:1]), seg])  # image 0 empty: not one per image
    objs2 = find_objects(torch.from_numpy(padded), "largest")
    acts2 = [np.concatenate([np.zeros_like(a[:1]), a]) for a in acts]
    general = object_features([torch.from_numpy(a) for a in acts2], objs2, region)
    torch.testing.assert_close(fast, general, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["all", "largest"])
@pytest.mark.parametrize("region", ["mask", "mask+grid2"])
def test_sparse_pooling_equals_the_dense_maps(monkeypatch, region, mode):
    """`mask` and tiled `mask+grid2` pool through a sparse matrix of the mask's pixels; with the dense
    maps of `region_maps` instead (the path of an object whose window is too small to tile) the
    features are the same, and a batch that mixes both paths gives each object its own."""
    rng = np.random.default_rng(11)
    seg = np.zeros((5, 32, 32), dtype=bool)
    for i in range(5):  # blobs of about 18×20 pixels with holes: windows of 2 pixels or more at stride 8
        seg[i, 4 + i:22, 6:26] = rng.random((18 - i, 20)) < 0.8
        seg[i, 6 + i:20, 8:24] = True
    if mode == "all":  # second objects, too small to tile at stride 8: that layer takes the dense maps
        seg[1, 29:32, 29:32] = True
        seg[3, 29:32, 0:2] = True
    objs = find_objects(torch.from_numpy(seg), mode, min_area=2)
    acts = [torch.from_numpy(np.maximum(rng.standard_normal((5, ch, 32 // s, 32 // s)), 0).astype(np.float32))
            for s, ch in [(1, 3), (2, 4), (4, 2), (8, 5)]]
    tiled = []
    tiling = extract._tiling
    monkeypatch.setattr(extract, "_tiling", lambda *a: tiled.append(tiling(*a)) or tiled[-1])
    sparse = object_features(acts, objs, region)
    assert bool(tiled[0].all())  # at full size every object went through the sparse matrix
    assert all(bool(t.all()) for t in tiled) == (region == "mask" or mode == "largest")
    monkeypatch.setattr(extract, "_tiling", lambda win, g: torch.zeros(len(win), dtype=torch.bool))
    dense = object_features(acts, objs, region)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=2e-6)
