"""The scenes benchmark: Fashion-MNIST items and drawn shapes composited onto colour canvases.

Fashion-MNIST is centred, aligned and grey on black, so raw pixels are a hard baseline
there and it says little about real catalogs. A scene puts one *primary item* at a
random position, scale (30–90 % of the frame), rotation and colour on a varied
background (white, black, solid colour, gradient, noise, texture), with zero to two
smaller distractor items beside it. Each item appears in several scenes (its *copies*,
other poses and backgrounds): the item is the instance label, its class the semantic
label. The compositing gives the ground-truth masks.

Items: Fashion-MNIST items (train items for the training split, test items for the
test splits, so no item is in both) and five kinds of drawn shapes (ellipse, polygon,
star, ring, cross) with a random outline and pattern each. Every item has its own
colours and pattern (two-tone, stripes, inverted shading ...), kept across its copies
up to a small jitter, as a real object keeps its colours across photographs.
No fonts are drawn (emoji fonts are reserved for independent evaluation).

`write_scenes(out)` writes, deterministically for a seed:

    out/train/NNNNNN.png, out/train/masks/NNNNNN.png   scenes of training items, plus the
                                                      plain Fashion-MNIST items as they are
    out/test/...                                       scenes of held-out items
    out/train.csv, out/test.csv                        one row per image (a `simdex index`
                                                      list: path, mask, label, metadata)

Masks hold the item's index in the scene (1 = primary, 2–3 = distractors, 0 = background).
Columns: path, mask, label (class of the primary item), instance (the primary item),
split (`train`; in test.csv the first copy of each item is `query`, the others
`gallery`), view (copy number), kind (`scene` or `plain`), objects (items in the
scene), items (their ids in mask order, `;`-separated), background, scale, rotation.

    simdex scenes --out data/scenes            # the benchmark's default size
    simdex index data/scenes/train.csv --catalog catalogs/scenes
    simdex index data/scenes/test.csv --catalog catalogs/scenes
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simdex.indexer.sources import FASHION_MNIST_CLASSES, fashion_mnist_source

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("ellipse", "polygon", "star", "ring", "cross")
BACKGROUNDS = ("white", "black", "solid", "gradient", "noise", "texture")
BACKGROUND_WEIGHTS = (0.18, 0.14, 0.2, 0.16, 0.16, 0.16)
PATTERNS = ("shade", "inverted", "two-tone", "stripes", "flat")
DISTRACTOR_ODDS = (0.5, 0.3, 0.2)  # relative odds of 0, 1, 2 distractors in a scene
CSV_FIELDS = ["path", "mask", "label", "instance", "split", "view", "kind", "objects", "items", "background",
              "scale", "rotation"]
DEFAULT_SCENES_DIR = Path("data/scenes")


@dataclass
class ScenesConfig:
    """Sizes of the benchmark. The defaults make 24,000 training scenes, 6,000 plain
    Fashion-MNIST training images and 2,400 test scenes (600 held-out items × 4 copies)."""

    size: int = 64
    train_items: int = 6000  # items (Fashion-MNIST + shapes) of the training split
    train_copies: int = 4
    plain_fmnist: int = 6000  # Fashion-MNIST training items added as they are (grey on black, 28×28)
    test_items: int = 600
    test_copies: int = 4  # copy 0 is the query, the others the gallery
    shape_fraction: float = 0.25  # share of the items that are drawn shapes
    min_scale: float = 0.3  # the primary item's longest side, as a fraction of the frame
    max_scale: float = 0.9
    max_rotation_deg: float = 60.0
    max_distractors: int = 2
    seed: int = 0


# ----------------------------------------------------------------------------- items

@dataclass
class Item:
    """An item: its id, class, a 28×28 coverage map (alpha) and shading in [0, 1]."""

    item_id: str
    label: str
    alpha: np.ndarray  # (h, w) float32, cropped to the item
    shade: np.ndarray  # (h, w) float32
    colors: np.ndarray  # (2, 3) float32: primary and secondary colour
    pattern: str
    stripe_period: float
    stripe_angle: float


def _crop(alpha: np.ndarray, shade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(alpha > 0.05)
    if len(ys) == 0:
        return alpha, shade
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return alpha[sl], shade[sl]


def _random_colors(rng: np.random.Generator) -> np.ndarray:
    """Two colours: hue anywhere, saturation and value spread so dark, pale and vivid items occur."""
    import colorsys

    out = []
    for _ in range(2):
        h, s, v = rng.random(), rng.uniform(0.0, 1.0) ** 0.7, rng.uniform(0.15, 1.0)
        out.append(colorsys.hsv_to_rgb(h, s, v))
    return np.asarray(out, np.float32)


def draw_shape(kind: str, rng: np.random.Generator, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """A drawn shape of `kind` with a random outline: (alpha, shade), each (size, size) float32.

    Drawn 4× larger and reduced with antialiasing, so edges are soft as in photographs.
    """
    from PIL import Image, ImageDraw

    big = size * 4
    img = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(img)
    c = big / 2
    r = big * rng.uniform(0.36, 0.48)
    if kind == "ellipse":
        ax, ay = r, r * rng.uniform(0.45, 1.0)
        d.ellipse([c - ax, c - ay, c + ax, c + ay], fill=255)
    elif kind == "polygon":
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n)) if rng.random() < 0.5 else \
            np.arange(n) * 2 * math.pi / n + rng.uniform(0, math.pi)
        radii = r * rng.uniform(0.7, 1.0, n)
        d.polygon([(c + a * math.cos(t), c + a * math.sin(t)) for a, t in zip(radii, angles)], fill=255)
    elif kind == "star":
        n = int(rng.integers(4, 9))
        inner = rng.uniform(0.3, 0.6)
        pts = []
        for i in range(2 * n):
            a = r if i % 2 == 0 else r * inner
            t = i * math.pi / n
            pts.append((c + a * math.cos(t), c + a * math.sin(t)))
        d.polygon(pts, fill=255)
    elif kind == "ring":
        ax, ay = r, r * rng.uniform(0.6, 1.0)
        t = rng.uniform(0.35, 0.65)
        d.ellipse([c - ax, c - ay, c + ax, c + ay], fill=255)
        d.ellipse([c - ax * t, c - ay * t, c + ax * t, c + ay * t], fill=0)
    elif kind == "cross":
        w = r * rng.uniform(0.25, 0.5)
        h = r * rng.uniform(0.7, 1.0)
        d.rectangle([c - w, c - h, c + w, c + h], fill=255)
        d.rectangle([c - h, c - w, c + h, c + w], fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}; choose one of {', '.join(SHAPE_CLASSES)}")
    alpha = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = rng.uniform(0, 2 * math.pi)
    shade = 0.5 + 0.5 * np.cos(2 * math.pi * ((xx * math.cos(t) + yy * math.sin(t)) * rng.uniform(0.5, 1.5)))
    return np.clip(alpha, 0, 1), shade.astype(np.float32)


def _make_item(item_id: str, label: str, alpha: np.ndarray, shade: np.ndarray,
               rng: np.random.Generator) -> Item:
    alpha, shade = _crop(alpha, shade)
    return Item(item_id, label, alpha, shade, _random_colors(rng), PATTERNS[int(rng.integers(len(PATTERNS)))],
                float(rng.uniform(2.5, 6.0)), float(rng.uniform(0, math.pi)))


def make_items(images: np.ndarray, labels: list[str], ids: list[str], shapes: int, shape_prefix: str,
               rng: np.random.Generator) -> list[Item]:
    """Items from Fashion-MNIST images (uint8 (n, 28, 28)) and `shapes` drawn shapes."""
    items = []
    for img, label, item_id in zip(images, labels, ids):
        g = img.astype(np.float32) / 255.0
        # Coverage from the grey level (soft edges); shading keeps the item's own texture.
        items.append(_make_item(item_id, label, np.clip(g * 4.0, 0, 1), g, rng))
    for j in range(shapes):
        kind = SHAPE_CLASSES[j % len(SHAPE_CLASSES)]
        alpha, shade = draw_shape(kind, rng)
        items.append(_make_item(f"{shape_prefix}-{kind}-{j:05d}", f"shape:{kind}", alpha, shade, rng))
    return items


# ----------------------------------------------------------------------------- rendering

def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def make_background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float32 background of `kind` (one of BACKGROUNDS)."""
    c1, c2 = _random_colors(rng)
    if kind == "white":
        return np.full((size, size, 3), rng.uniform(0.93, 1.0), np.float32)
    if kind == "black":
        return np.full((size, size, 3), rng.uniform(0.0, 0.06), np.float32)
    if kind == "solid":
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    t = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(t) + yy * math.sin(t)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    if kind == "gradient":
        return (c1 * (1 - ramp[..., None]) + c2 * ramp[..., None]).astype(np.float32)
    if kind == "noise":
        sigma = rng.uniform(0.04, 0.2)
        noise = rng.normal(0, sigma, (size // 4 + 1, size // 4 + 1, 3)) if rng.random() < 0.5 \
            else rng.normal(0, sigma, (size, size, 3))
        if noise.shape[0] != size:  # blotchy noise: upsampled blocks
            noise = np.kron(noise, np.ones((4, 4, 1)))[:size, :size]
        return np.clip(c1 + noise, 0, 1).astype(np.float32)
    if kind == "texture":
        period = rng.uniform(4, 16)
        if rng.random() < 0.5:
            m = (np.floor(ramp * size / period) % 2)[..., None]
        else:
            m = ((np.floor(xx * size / period) + np.floor(yy * size / period)) % 2)[..., None]
        return (c1 * (1 - m) + c2 * m).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


def _item_layers(item: Item, scale_px: float, angle_deg: float, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The item at a pose: alpha (h, w) and colour (h, w, 3), both float32."""
    from PIL import Image

    h, w = item.alpha.shape
    f = scale_px / max(h, w)
    nh, nw = max(2, round(h * f)), max(2, round(w * f))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = item.shade
    c1, c2 = np.clip(item.colors * jitter, 0, 1)
    if item.pattern == "shade":
        color = c1 * (0.35 + 0.65 * s)[..., None]
    elif item.pattern == "inverted":
        color = c1 * (1.0 - 0.6 * s)[..., None]
    elif item.pattern == "two-tone":
        color = c1 * (1 - s[..., None]) + c2 * s[..., None]
    elif item.pattern == "stripes":
        u = xx * math.cos(item.stripe_angle) + yy * math.sin(item.stripe_angle)
        m = (np.floor(u / item.stripe_period) % 2)[..., None]
        color = (c1 * (1 - m) + c2 * m) * (0.6 + 0.4 * s)[..., None]
    else:  # flat
        color = np.broadcast_to(c1, (h, w, 3))
    layers = [item.alpha] + [color[..., k] for k in range(3)]
    out = []
    for layer in layers:
        im = Image.fromarray(np.ascontiguousarray(layer, np.float32), mode="F")
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        im = im.rotate(angle_deg, resample=Image.Resampling.BILINEAR, expand=True)
        out.append(np.asarray(im, np.float32))
    alpha = np.clip(out[0], 0, 1)
    color = np.clip(np.stack(out[1:], axis=-1), 0, 1)
    return alpha, color


def render_scene(primary: Item, distractors: list[Item], cfg: ScenesConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """One scene: image uint8 (S, S, 3), mask uint8 (S, S) with 1 = primary, 2.. = distractors, and its pose."""
    size = cfg.size
    jitter = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    scale = rng.uniform(cfg.min_scale, cfg.max_scale)
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    p_alpha, p_color = _item_layers(primary, scale * size, angle, jitter)
    obj_lum = float((_luminance(p_color) * p_alpha).sum() / max(p_alpha.sum(), 1e-6))
    # A background the object can be told from: resample the kind when the contrast is too low.
    for _ in range(8):
        kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_WEIGHTS))]
        canvas = make_background(kind, size, rng)
        if abs(float(_luminance(canvas).mean()) - obj_lum) > 0.18 or kind in ("noise", "texture"):
            break
    mask = np.zeros((size, size), np.uint8)
    layers = []
    for j, item in enumerate(distractors):
        ds = rng.uniform(0.18, max(0.2, min(0.45, 0.75 * scale)))
        a, c = _item_layers(item, ds * size, rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg),
                            rng.uniform(0.9, 1.1, 3).astype(np.float32))
        layers.append((j + 2, a, c))
    layers.append((1, p_alpha, p_color))  # the primary item last: on top, fully visible
    order = layers[-1:] + layers[:-1]  # but placed first, so distractors avoid it
    positions = {}
    occupied = np.zeros((size, size), bool)
    for idx, a, c in order:
        h, w = a.shape
        if h > size or w > size:  # a rotated item larger than the frame: shrink it to fit
            f = size / max(h, w)
            from PIL import Image

            nh, nw = max(1, int(h * f)), max(1, int(w * f))
            a = np.asarray(Image.fromarray(a, mode="F").resize((nw, nh), Image.Resampling.BILINEAR), np.float32)
            c = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c[..., k]), mode="F")
                                     .resize((nw, nh), Image.Resampling.BILINEAR), np.float32)
                          for k in range(3)], axis=-1)
            h, w = a.shape
        for _ in range(12):
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            cover = a > 0.5
            overlap = (occupied[top:top + h, left:left + w] & cover).sum()
            if idx == 1 or overlap <= 0.1 * max(cover.sum(), 1):
                positions[idx] = (a, c, top, left)
                occupied[top:top + h, left:left + w] |= cover
                break
    for idx, _, _ in layers:  # distractors first, the primary last
        if idx not in positions:
            continue
        a, c, top, left = positions[idx]
        h, w = a.shape
        region = canvas[top:top + h, left:left + w]
        canvas[top:top + h, left:left + w] = region * (1 - a[..., None]) + c * a[..., None]
        m = mask[top:top + h, left:left + w]
        m[a > 0.5] = idx
    shown = sorted(int(v) for v in np.unique(mask) if v)
    image = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
    return image, mask, {"background": kind, "scale": round(float(scale), 4), "rotation": round(float(angle), 2),
                         "shown": shown}


# ----------------------------------------------------------------------------- writing

def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_split(out: Path, name: str, items: list[Item], copies: int, cfg: ScenesConfig, query_split: bool, plain: list[tuple[np.ndarray, str, str]] = (),
                 progress: Callable[[int, int], None] | None = None) -> int:
    folder = out / name
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    total = len(items) * copies + len(plain)
    n = 0
    split_no = {"train": 1, "test": 2}.get(name, 3)
    odds = np.asarray(DISTRACTOR_ODDS[: cfg.max_distractors + 1])
    distractor_odds = odds / odds.sum()  # P(0, 1, 2 distractors)
    for item_no, item in enumerate(items):
        for view in range(copies):
            # One generator per scene: any scene can be re-made alone, in any order.
            rng = np.random.default_rng([cfg.seed, split_no, item_no, view])
            k = int(rng.choice(len(distractor_odds), p=distractor_odds))
            # a split of fewer items than distractors drawn takes what there is (the same draws otherwise)
            others = [items[int(j)] for j in rng.choice(len(items), min(k, len(items)), replace=False)
                      if int(j) != item_no]
            image, mask, pose = render_scene(item, others, cfg, rng)
            stem = f"{n:06d}"
            _save_png(folder / f"{stem}.png", image)
            _save_png(folder / "masks" / f"{stem}.png", mask)
            ids = [item.item_id] + [o.item_id for o in others]
            split = ("query" if view == 0 else "gallery") if query_split else "train"
            rows.append({"path": f"{name}/{stem}.png", "mask": f"{name}/masks/{stem}.png", "label": item.label,
                         "instance": item.item_id, "split": split, "view": view, "kind": "scene",
                         "objects": len(pose["shown"]), "items": ";".join(ids[i - 1] for i in pose["shown"]),
                         "background": pose["background"], "scale": pose["scale"], "rotation": pose["rotation"]})
            n += 1
            if progress and n % 200 == 0:
                progress(n, total)
    for img, label, item_id in plain:
        stem = f"{n:06d}"
        _save_png(folder / f"{stem}.png", img)
        _save_png(folder / "masks" / f"{stem}.png", (img > 12).astype(np.uint8))
        rows.append({"path": f"{name}/{stem}.png", "mask": f"{name}/masks/{stem}.png", "label": label,
                     "instance": item_id, "split": "train", "view": 0, "kind": "plain", "objects": 1,
                     "items": item_id, "background": "black", "scale": "", "rotation": 0})
        n += 1
    tmp = out / f"{name}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / f"{name}.csv")
    if progress:
        progress(total, total)
    return n


def write_scenes(out: str | os.PathLike = DEFAULT_SCENES_DIR, cfg: ScenesConfig | None = None,
                 fmnist_folder: str | os.PathLike | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Write the scenes benchmark into `out` (see the module docstring); returns its summary.

    Deterministic: the same config and Fashion-MNIST files give the same bytes. The
    CSVs are written last, so a folder with both CSVs is complete; rerunning overwrites.

    Raises:
        SourceError: Fashion-MNIST is not installed (the message says how to get it).
        ValueError: a size that cannot be made (more items than Fashion-MNIST has).
    """
    cfg = cfg or ScenesConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_src = fashion_mnist_source(fmnist_folder, splits=("train",))
    test_src = fashion_mnist_source(fmnist_folder, splits=("test",))
    rng = np.random.default_rng(cfg.seed)
    n_shapes_train = int(round(cfg.train_items * cfg.shape_fraction))
    n_shapes_test = int(round(cfg.test_items * cfg.shape_fraction))
    n_fm_train, n_fm_test = cfg.train_items - n_shapes_train, cfg.test_items - n_shapes_test
    if n_fm_train + cfg.plain_fmnist > len(train_src) or n_fm_test > len(test_src):
        raise ValueError("more Fashion-MNIST items asked for than the splits hold")
    perm_train = rng.permutation(len(train_src))
    perm_test = rng.permutation(len(test_src))

    def fm(src, idx, prefix):
        imgs = src.images[idx]
        labels = [src.records[int(i)].label for i in idx]
        return imgs, labels, [f"{prefix}-{int(i):05d}" for i in idx]

    imgs, labels, ids = fm(train_src, np.sort(perm_train[:n_fm_train]), "fm-train")
    train_items = make_items(imgs, labels, ids, n_shapes_train, "shape-train", rng)
    imgs, labels, ids = fm(test_src, np.sort(perm_test[:n_fm_test]), "fm-test")
    test_items = make_items(imgs, labels, ids, n_shapes_test, "shape-test", rng)
    plain_idx = np.sort(perm_train[n_fm_train:n_fm_train + cfg.plain_fmnist])
    imgs, labels, ids = fm(train_src, plain_idx, "fm-train")
    plain = list(zip(imgs, labels, ids))

    def stage(name):
        return (lambda done, total: progress(name, done, total)) if progress else None

    n_train = _write_split(out, "train", train_items, cfg.train_copies, cfg, False, plain, stage("train"))
    n_test = _write_split(out, "test", test_items, cfg.test_copies, cfg, True, (), stage("test"))
    summary = {"train_images": n_train, "test_images": n_test, "train_items": len(train_items),
               "test_items": len(test_items), "classes": list(FASHION_MNIST_CLASSES) +
               [f"shape:{k}" for k in SHAPE_CLASSES], "config": asdict(cfg)}
    log.info("wrote %d training and %d test images into %s", n_train, n_test, out)
    return summary
