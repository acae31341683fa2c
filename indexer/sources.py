"""Image sources: where images come from, how they are decoded, and their masks.

A source is a sequence of records (where the image is, its ordinal, label and
metadata) with a `read(i)` that decodes image i to float32 (C, H, W) in [0, 1].
Three kinds, chosen by `open_source(spec)`:

- a folder of images, searched recursively (png, jpg, jpeg, webp, bmp, tif, tiff);
  an image in a sub-folder is labelled with its sub-folder's path (as torchvision's
  ImageFolder does); every other entry (a non-image, a broken symlink, a FIFO, a
  hidden file or folder, which is never read) becomes an errors row with its reason;
- a CSV or Parquet list with a `path` column (relative paths are relative to the
  list's folder), an optional `label` and `mask` column; every other column is
  metadata carried into the catalog;
- IDX files (MNIST / Fashion-MNIST): a `*-images-idx3-ubyte[.gz]` file, or
  `fashion-mnist` / the folder that holds the Fashion-MNIST files, which yields
  both splits (train first, then test) with a `split` metadata column;
  `fashion-mnist[:train|:test]:inverted` gives the same items on white (1 − grey);
- `fashion-mnist-scenes[:train|:test]`: the scenes benchmark (`indexer.scenes`),
  the lists in $SIMDEX_SCENES or ./data/scenes.

Decoding never raises anything but `ImageReadError`, whose `reason` is a short
code stored in the catalog's errors table. Images are decoded as displayed: an EXIF
orientation is applied before anything else sees the pixels.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simdex.engine.errors import SimdexError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), Path("data/fashion-mnist"))
DEFAULT_MAX_PIXELS = 64_000_000
# Mask rule: a pixel belongs to the object when any channel differs from the background
# colour (the median of the image's 1-pixel border) by more than this, on a 0..1 scale.
DEFAULT_MASK_THRESHOLD = 0.05
_EXIF_ORIENTATION = 0x0112  # 1 = as stored; 2-8 = mirrored and/or rotated (applied before segmentation)


class SourceError(SimdexError):
    """A source that cannot be opened at all (wrong path, unknown format, missing column)."""


class ImageReadError(SimdexError):
    """One image that cannot be decoded; `reason` is a short code for the errors table."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class ImageRecord:
    source: str  # path or URI of the image (for IDX: the file and '#index')
    ordinal: int  # position of the image within its source
    label: str | None = None
    metadata: dict = field(default_factory=dict)
    mask: str | None = None  # path of a mask image (non-zero = object), if given
    skip_reason: str | None = None  # listed but never read (a hidden file): read() raises ImageReadError(skip_reason)


# ----------------------------------------------------------------------------- decoding

def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.uint32) or arr.dtype.kind in "iu":
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr.astype(np.float32) / top, 0.0, 1.0)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)


def decode_image(path: str | os.PathLike, channels: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to float32 (channels, H, W) in [0, 1].

    Grey, RGB, RGBA/LA (composited over white), palette, 1-bit, 16-bit, float and
    CMYK images are converted; `channels` is 1 (luminance) or 3 (RGB).

    Raises:
        ImageReadError: reason one of missing, broken_symlink, not_a_file (a FIFO, socket
            or device: never opened, so never blocks), empty_file, not_an_image, too_large,
            truncated, decode_error.
    """
    path = _regular_file(path)
    return _decode(path, str(path), channels, max_pixels)[0]


def _regular_file(path: str | os.PathLike) -> Path:
    """The path of a non-empty regular file, checked without opening it (ImageReadError otherwise)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageReadError("broken_symlink" if path.is_symlink() else "missing", str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError("not_a_file", f"{path} is a {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size == 0:
        raise ImageReadError("empty_file", str(path))
    return path


def decode_image_for(path: str | os.PathLike, channels: int, size: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image` for a model of input `size`: a JPEG larger than it is decoded at 1/2, 1/4 or 1/8
    of its size (libjpeg's DCT scaling: 2-8× less work), never below what `fit_to_size` keeps of it.
    Returns the image and the (height, width) of the image as stored and displayed, which boxes and
    `fit_to_size(..., original_hw=)` refer to. Every path that makes features (index, query by
    image, upload, explain) decodes this way, so one file always gives one vector."""
    path = _regular_file(path)
    return _decode(path, str(path), channels, max_pixels, size)


def _file_kind(mode: int) -> str:
    return ("folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")


def decode_image_bytes(data: bytes, channels: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`decode_image` for the bytes of an image file (an upload to `simdex serve`); the same errors."""
    import io

    if not data:
        raise ImageReadError("empty_file", "no bytes")
    return _decode(io.BytesIO(data), "the uploaded image", channels, max_pixels)[0]


def decode_image_bytes_for(data: bytes, channels: int, size: int,
                           max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image_for` for the bytes of an image file."""
    import io

    if not data:
        raise ImageReadError("empty_file", "no bytes")
    return _decode(io.BytesIO(data), "the uploaded image", channels, max_pixels, size)


_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90°: displayed width = stored height


def _decode(fp, name: str, channels: int, max_pixels: int,
            reduce_to: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """(image (C, H', W'), (H, W) as displayed); H' = H unless `reduce_to` let a JPEG decode smaller."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError("too_large", f"{w}x{h} pixels exceeds the limit of {max_pixels}")
                if reduce_to and img.format == "JPEG" and max(w, h) >= 2 * reduce_to:
                    keep = reduce_to / max(w, h)  # what fit_to_size keeps of each side
                    img.draft(img.mode, (math.ceil(w * keep), math.ceil(h * keep)))
                img.load()
                orientation = _orientation(img)
                if orientation != 1:  # as displayed: boxes in displayed coordinates
                    from PIL import ImageOps

                    img = ImageOps.exif_transpose(img)
                shown = (w, h) if orientation in _SWAPS_AXES else (h, w)
                return _pil_to_array(img, channels), shown
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not_an_image", name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError("too_large", str(exc)) from None
    except (OSError, SyntaxError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "decode_error"
        raise ImageReadError(reason, str(exc)) from None
    except Exception as exc:  # a decoder bug on hostile input must not stop a job
        raise ImageReadError("decode_error", f"{type(exc).__name__}: {exc}") from None


# where Pillow's getexif() finds an orientation: EXIF (JPEG, WebP, PNG eXIf), a PNG text chunk, XMP, TIFF tags
_ORIENTATION_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _orientation(img) -> int:
    """The image's EXIF orientation (1: as stored). Without any of the metadata getexif() reads it is
    1 without parsing (a fifth of the decode time of a 64×64 PNG)."""
    if not hasattr(img, "tag_v2") and not any(key in img.info for key in _ORIENTATION_INFO):
        return 1
    return img.getexif().get(_EXIF_ORIENTATION, 1)


def _pil_to_array(img, channels: int) -> np.ndarray:
    from PIL import Image

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img, mode = Image.alpha_composite(white, rgba).convert("RGB"), "RGB"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit: full scale is 65535 whatever the values (a dark image stays dark).
        arr = np.asarray(img).astype(np.float32)[None] / 65535.0  # (1, H, W)
        return arr if channels == 1 else np.repeat(arr, 3, axis=0)
    if mode in ("I", "F"):
        arr = _to_float(np.asarray(img))  # (H, W), 32-bit int / float
        arr = arr[None]
        return arr if channels == 1 else np.repeat(arr, 3, axis=0)
    if mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 1 ...
        if mode == "1":
            img = img.convert("L")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    arr = _to_float(np.asarray(img))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


@functools.lru_cache(maxsize=256)
def _antialias_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, the input pixels of a triangle filter widened by the reduction and their
    weights (PIL's and torch's antialiased bilinear: support n_in / n_out input pixels on each
    side): index (n_out, T) int64 and weight (n_out, T) float32 rows summing to 1, padded with
    zero weights on pixel 0."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    rows = []
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((x - centre + 0.5) / support), 0.0, None)
        rows.append((x, w / w.sum()))
    taps = max(len(x) for x, _ in rows)
    index, weight = np.zeros((n_out, taps), np.int64), np.zeros((n_out, taps), np.float32)
    for i, (x, w) in enumerate(rows):
        index[i, : len(x)], weight[i, : len(x)] = x, w
    index.setflags(write=False)
    weight.setflags(write=False)  # shared by every caller through the cache
    return index, weight


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) → (C, height, width), antialiased bilinear: torch's
    `F.interpolate(mode="bilinear", antialias=True)` to 2e-6 (tested), without torch, so that a
    query by image (indexer/lite.py) never imports it. Separable, each pass a gather of the
    filter's few taps (no BLAS: decoding workers must not start BLAS threads beside the model's)."""
    _, h, w = image.shape
    iy, wy = _antialias_taps(h, height)
    ix, wx = _antialias_taps(w, width)
    image = np.asarray(image, dtype=np.float32)
    rows = np.einsum("cytw,yt->cyw", image[:, iy, :], wy)  # (C, height, W)
    return np.einsum("cyxt,xt->cyx", rows[:, :, ix], wx)  # (C, height, width)


def fit_to_size(image: np.ndarray, size: int, background: np.ndarray | None = None,
                original_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, float, int, int]:
    """Fit (C, H, W) into a size×size canvas: scale down to fit (aspect kept), pad centred.

    Images that already fit are only padded (Fashion-MNIST's 28×28 → 32×32), never
    enlarged. Returns the canvas, the scale and the (top, left) offset, so that
    canvas coordinates map back to the image: y_img = (y_canvas - top) / scale.
    `original_hw`: the size of the image as stored when `image` was decoded smaller
    (`decode_image_for`); the scale then maps the canvas back to the stored image.
    """
    c, h, w = image.shape
    reduced = 1.0 if original_hw is None else max(h, w) / max(original_hw)
    if background is None:
        background = border_background(image)
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = resize_antialiased(image, nh, nw)
        h, w = nh, nw
    top, left = (size - h) // 2, (size - w) // 2
    canvas = np.empty((c, size, size), dtype=np.float32)
    canvas[...] = np.asarray(background, dtype=np.float32).reshape(c, 1, 1)
    canvas[:, top:top + h, left:left + w] = image
    return canvas, scale * reduced, top, left


def border_background(image: np.ndarray) -> np.ndarray:
    """Per-channel background colour: the median of the image's 1-pixel border. (C, H, W) → (C,), or
    a batch (..., C, H, W) → (..., C).

    np.median's value (the mean of the two middle values of an even count) by one partition:
    a third of np.median's time on a 64×64 image, which every decoded image pays."""
    border = np.concatenate(
        [image[..., 0, :], image[..., -1, :], image[..., :, 0], image[..., :, -1]], axis=-1
    )
    n = border.shape[-1]
    k = n // 2
    if n % 2:
        return np.partition(border, k, axis=-1)[..., k].astype(np.float32)
    middle = np.partition(border, (k - 1, k), axis=-1)
    return ((middle[..., k - 1] + middle[..., k]) / 2).astype(np.float32)


def mask_from_background(image: np.ndarray, threshold: float = DEFAULT_MASK_THRESHOLD) -> np.ndarray:
    """The training mask of an object on a blank background. image (C, H, W) → bool (H, W).

    Rule: the background colour is the per-channel median of the 1-pixel border; a
    pixel is object when any channel differs from it by more than `threshold`.
    """
    bg = border_background(image)[:, None, None]
    return (np.abs(image - bg) > threshold).any(axis=0)


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask image (non-zero = object) → bool (H, W)."""
    m = decode_image(path, channels=1)[0] > 0
    if shape is not None and m.shape != tuple(shape):
        raise ImageReadError("mask_mismatch", f"mask {m.shape} vs image {tuple(shape)}")
    return m


# ----------------------------------------------------------------------------- IDX

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise SourceError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SourceError(f"{path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise SourceError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise SourceError(f"{path}: not an IDX file (its header claims {ndim} dimensions, the file is {len(data)} bytes)")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    try:
        arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    except ValueError:  # not a whole number of values
        raise SourceError(f"{path}: truncated IDX file (header says {shape})") from None
    if arr.size != math.prod(shape):  # Python ints: a forged header cannot overflow
        raise SourceError(f"{path}: truncated IDX file ({arr.size} values, header says {shape})")
    return arr.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist() -> Path:
    """The folder holding Fashion-MNIST's IDX files, from $SIMDEX_FASHION_MNIST, Debian's
    `dataset-fashion-mnist` package, or ./data/fashion-mnist (where `make data` downloads it)."""
    candidates = [Path(os.environ["SIMDEX_FASHION_MNIST"])] if os.environ.get("SIMDEX_FASHION_MNIST") else []
    candidates += list(FASHION_MNIST_DIRS) + [Path("data/fashion-mnist/FashionMNIST/raw")]
    for folder in candidates:
        if _find_idx(folder, "train-images-idx3-ubyte") and _find_idx(folder, "t10k-images-idx3-ubyte"):
            return folder
    raise SourceError(
        "Fashion-MNIST not found. Install it with `apt-get install -y dataset-fashion-mnist` "
        "(Debian, as root), or `make data` / `python -m indexer.datasets` to download it with "
        "torchvision into data/fashion-mnist, or set SIMDEX_FASHION_MNIST to its folder."
    )


# ----------------------------------------------------------------------------- sources

class ImageSource:
    """A sequence of images. Subclasses fill `records` and implement `read`."""

    spec: str
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def read(self, i: int, channels: int = 1) -> np.ndarray:
        """Image i as float32 (channels, H, W) in [0, 1]; raises ImageReadError."""
        raise NotImplementedError

    def read_for(self, i: int, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image i for a model of input `size`, and its stored (H, W): see `decode_image_for`."""
        image = self.read(i, channels)
        return image, (image.shape[1], image.shape[2])

    def read_mask(self, i: int, image: np.ndarray) -> np.ndarray:
        """The training mask of image i: its mask file if it has one, else the background rule."""
        rec = self.records[i]
        if rec.mask:
            return read_mask(rec.mask, image.shape[1:])
        return mask_from_background(image)

    @property
    def metadata_columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for rec in self.records[:1]:
            cols.update(dict.fromkeys(rec.metadata))
        return list(cols)


class IdxSource(ImageSource):
    """Images held in memory from IDX files (uint8 (N, H, W))."""

    def __init__(self, spec: str, images: np.ndarray, records: list[ImageRecord], inverted: bool = False):
        self.spec = spec
        self.images = images
        self.records = records
        self.inverted = inverted  # white background: 1 − the stored grey

    def read(self, i: int, channels: int = 1) -> np.ndarray:
        arr = self.images[i].astype(np.float32)[None] / 255.0  # (1, H, W)
        if self.inverted:
            arr = 1.0 - arr
        return arr if channels == 1 else np.repeat(arr, 3, axis=0)


class FileSource(ImageSource):
    """Images read from files: a folder or a CSV/Parquet list."""

    def __init__(self, spec: str, records: list[ImageRecord], max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.records = records
        self.max_pixels = max_pixels

    def read(self, i: int, channels: int = 1) -> np.ndarray:
        return decode_image(self._readable(i), channels, self.max_pixels)

    def read_for(self, i: int, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
        return decode_image_for(self._readable(i), channels, size, self.max_pixels)

    def _readable(self, i: int) -> str:
        rec = self.records[i]
        if rec.skip_reason:
            raise ImageReadError(rec.skip_reason, f"{rec.source}: its name starts with '.' (hidden: not read)")
        return rec.source


def _idx_labels(images_path: Path) -> np.ndarray | None:
    name = images_path.name.replace("images-idx3-ubyte", "labels-idx1-ubyte")
    labels = images_path.with_name(name)
    return read_idx(labels) if labels.is_file() and labels != images_path else None


def _idx_source(spec: str, parts: list[tuple[Path, dict]], class_names=None) -> IdxSource:
    arrays, records = [], []
    for path, meta in parts:
        images = read_idx(path)
        if images.ndim != 3:
            raise SourceError(f"{path}: expected an images IDX file (N, H, W), got shape {images.shape}")
        labels = _idx_labels(path)
        for j in range(len(images)):
            label = None
            if labels is not None:
                label = class_names[labels[j]] if class_names else str(int(labels[j]))
            records.append(ImageRecord(f"{path}#{j}", len(records), label, dict(meta)))
        arrays.append(images.astype(np.uint8, copy=False))
    return IdxSource(spec, np.concatenate(arrays) if len(arrays) > 1 else arrays[0], records)


def fashion_mnist_source(folder: str | os.PathLike | None = None, splits=("train", "test")) -> IdxSource:
    """Both Fashion-MNIST splits (train first) with a `split` column and class names as labels."""
    folder = Path(folder) if folder else find_fashion_mnist()
    stems = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
    parts = []
    for split in splits:
        p = _find_idx(folder, stems[split])
        if p is None:
            raise SourceError(f"{folder} has no {stems[split]}[.gz]")
        parts.append((p, {"split": split}))
    return _idx_source("fashion-mnist" if len(splits) == 2 else f"fashion-mnist:{splits[0]}", parts,
                       FASHION_MNIST_CLASSES)


def _folder_source(folder: Path) -> FileSource:
    """Every entry but a folder is a record, so that the indexer accounts for each: non-images,
    broken symlinks, FIFOs, sockets and devices fail to decode with their reason (decode_image
    never opens what is not a regular file). A hidden file or folder (name starting with '.') is
    listed but never read: one errors row, `hidden_file` or `hidden_folder` (its content unlisted)."""
    records = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        hidden = next((i for i, part in enumerate(rel.parts) if part.startswith(".")), None)
        if hidden is not None and hidden < len(rel.parts) - 1:
            continue  # inside a hidden folder: that folder's row stands for it
        if hidden is None and p.is_dir():
            continue
        skip = None if hidden is None else "hidden_folder" if p.is_dir() else "hidden_file"
        label = str(rel.parent) if str(rel.parent) != "." else None
        records.append(ImageRecord(str(p), len(records), label, {}, skip_reason=skip))
    if not records:
        raise SourceError(f"{folder} holds no files")
    return FileSource(str(folder), records)


def _list_source(path: Path) -> FileSource:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"cannot read list {path}: {exc}") from None
    if "path" not in table.column_names:
        raise SourceError(f"{path} needs a 'path' column (found: {', '.join(table.column_names)})")
    rows = table.to_pylist()
    records = []
    for row in rows:
        p = row.pop("path")
        if p is None:
            continue
        if "://" not in str(p) and not os.path.isabs(str(p)):
            p = str(path.parent / str(p))
        label = row.pop("label", None)
        mask = row.pop("mask", None)
        if mask and "://" not in str(mask) and not os.path.isabs(str(mask)):
            mask = str(path.parent / str(mask))
        records.append(ImageRecord(str(p), len(records), None if label is None else str(label), row, mask))
    return FileSource(str(path), records)


FASHION_MNIST_SPECS = ("fashion-mnist", "fashion-mnist:train", "fashion-mnist:test", "fashion-mnist:inverted",
                       "fashion-mnist:train:inverted", "fashion-mnist:test:inverted")
SCENES_SPECS = ("fashion-mnist-scenes", "fashion-mnist-scenes:train", "fashion-mnist-scenes:test")


def find_scenes() -> Path:
    """The folder of the scenes benchmark (`simdex scenes`): $SIMDEX_SCENES or ./data/scenes."""
    folder = Path(os.environ.get("SIMDEX_SCENES") or "data/scenes")
    if not ((folder / "train.csv").is_file() and (folder / "test.csv").is_file()):
        raise SourceError(f"the scenes benchmark is not in {folder}: write it with `simdex scenes --out {folder}` "
                          f"(about 5 minutes), or set SIMDEX_SCENES to its folder")
    return folder


def scenes_source(spec: str = "fashion-mnist-scenes") -> FileSource:
    """The scenes benchmark as one source: `fashion-mnist-scenes` (train then test),
    `fashion-mnist-scenes:train` or `fashion-mnist-scenes:test`."""
    folder = find_scenes()
    names = ("train", "test") if ":" not in spec else (spec.split(":")[1],)
    records: list[ImageRecord] = []
    for name in names:
        for rec in _list_source(folder / f"{name}.csv").records:
            records.append(ImageRecord(rec.source, len(records), rec.label, rec.metadata, rec.mask))
    return FileSource(spec, records)


def open_source(spec: str | os.PathLike) -> ImageSource:
    """Open a source from what a user types: a folder, a .csv/.parquet list, an IDX file,
    `fashion-mnist` (both splits, from the Debian package or a download) or
    `fashion-mnist-scenes` (the scenes benchmark that `simdex scenes` writes).

    Raises:
        SourceError: the path does not exist or is not a known kind of source.
    """
    text = str(spec)
    if text.lower() in SCENES_SPECS:
        return scenes_source(text.lower())
    if text.lower() in FASHION_MNIST_SPECS:
        parts = text.lower().split(":")
        splits = tuple(p for p in parts[1:] if p != "inverted") or ("train", "test")
        src = fashion_mnist_source(splits=splits)
        if "inverted" in parts:  # the same items on a white background (a test of the model, not of the data)
            src.inverted, src.spec = True, text.lower()
        return src
    path = Path(text)
    if not path.exists():
        raise SourceError(f"source not found: {path} (give a folder of images, a .csv/.parquet list, "
                          f"an IDX file, or 'fashion-mnist')")
    if path.is_dir():
        if _find_idx(path, "train-images-idx3-ubyte") and _find_idx(path, "t10k-images-idx3-ubyte"):
            return fashion_mnist_source(path)
        return _folder_source(path)
    name = path.name.lower()
    if name.endswith((".csv", ".parquet", ".pq")):
        return _list_source(path)
    if "idx3-ubyte" in name:
        return _idx_source(str(path), [(path, {})])
    raise SourceError(f"{path}: unknown kind of source; expected a folder, .csv, .parquet or IDX file")


@functools.lru_cache(maxsize=4)
def _idx_images(path: str) -> np.ndarray:
    return read_idx(path)


def read_source_image(source: str, channels: int = 1) -> np.ndarray:
    """An image as a catalog's `source` column names it (a file, or `FILE#i` for image i of an IDX
    file) → float32 (channels, H, W) in [0, 1], decoded as the indexer decoded it.

    Raises:
        ImageReadError: the file is gone or unreadable, or the IDX file has no image i.
    """
    if "#" in source and not os.path.exists(source):
        path, index = source.rsplit("#", 1)
        try:
            arr = _idx_images(path)[int(index)].astype(np.float32)[None] / 255.0  # (1, H, W)
        except (SourceError, ValueError, IndexError) as exc:
            raise ImageReadError("missing", f"{source}: {exc}") from None
        return arr if channels == 1 else np.repeat(arr, channels, axis=0)
    return decode_image(source, channels)


def read_source_image_for(source: str, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_source_image` for a model of input `size`, as the indexer read it (`decode_image_for`)."""
    if "#" in source and not os.path.exists(source):
        image = read_source_image(source, channels)
        return image, (image.shape[1], image.shape[2])
    return decode_image_for(source, channels, size)
