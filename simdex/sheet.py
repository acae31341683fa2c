"""Contact sheet: the query image(s) and the results with their P (the paper's Fig. 5/6)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from simdex.engine.errors import SimdexError


class SheetError(SimdexError):
    """The sheet cannot be drawn (an image of the catalog is gone, Pillow is missing)."""


def read_catalog_image(source: str) -> np.ndarray:
    """An image as the catalog's `source` column names it (a file, or `file#index` for IDX) → uint8 (H, W, 3)."""
    from simdex.indexer.sources import ImageReadError, read_source_image

    try:
        arr = read_source_image(source, channels=3)
    except ImageReadError as exc:
        raise SheetError(f"cannot read catalog image {source}: {exc}") from None
    return (np.clip(arr, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


def contact_sheet(queries: list[tuple[str, np.ndarray]], results: list[tuple[str, np.ndarray]],
                  path: str | os.PathLike, tile: int = 112, columns: int = 6) -> Path:
    """Draw a row of query tiles, then the results in rows of `columns`, each captioned; save as PNG.

    Args:
        queries, results: (caption, uint8 (H, W, 3) image) pairs.
    """
    from PIL import Image, ImageDraw

    caption_h = 16
    rows = 1 + -(-len(results) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    cells = [(0, i, c, im) for i, (c, im) in enumerate(queries[:columns])]
    cells += [(1 + i // columns, i % columns, c, im) for i, (c, im) in enumerate(results)]
    for row, col, caption, image in cells:
        x, y = col * tile, row * (tile + caption_h)
        im = Image.fromarray(image).resize((tile - 4, tile - 4), Image.NEAREST)
        sheet.paste(im, (x + 2, y + 2))
        draw.text((x + 4, y + tile), caption, fill="black" if row else "darkred")
    path = Path(path)
    sheet.save(path)
    return path


def placeholder_tile(size: int = 28) -> np.ndarray:
    """A light grey tile crossed in grey: the cell of an image that cannot be read. uint8 (size, size, 3)."""
    tile = np.full((size, size, 3), 225, np.uint8)
    idx = np.arange(size)
    tile[idx, idx] = tile[idx, size - 1 - idx] = 150
    return tile


def draw_result_sheet(searcher, results, path: str | os.PathLike, query_ids=(), query_images=(),
                      tile: int = 112, columns: int = 6,
                      on_missing: Callable[[str, str], None] | None = None) -> Path:
    """Contact sheet of a search: the query objects (by id) or query image files, then the results
    (a table with rank, score and source) captioned with rank and P.

    An image that cannot be read any more (moved, deleted) becomes a crossed grey cell captioned
    "image gone"; `on_missing(source, reason)` is told about each one.
    """
    def image(source: str) -> tuple[np.ndarray, bool]:
        try:
            return read_catalog_image(source), True
        except SheetError as exc:
            if on_missing is not None:
                on_missing(source, str(exc))
            return placeholder_tile(), False

    def cell(caption: str, source: str) -> tuple[str, np.ndarray]:
        img, ok = image(source)
        return (caption if ok else f"{caption} image gone"[:24]), img

    queries = []
    if len(query_ids):
        meta = searcher.metadata(np.asarray(query_ids, np.int64), ["source"])
        queries = [cell(f"query {i}", s) for i, s in zip(query_ids, meta.column("source").to_pylist(), strict=True)]
    queries += [cell(Path(p).name[:16], str(p)) for p in query_images]
    tiles = [cell(f"#{r['rank']} P={r['score']:.3f}", r["source"]) for r in results.to_pylist()]
    return contact_sheet(queries, tiles, path, tile=tile, columns=max(columns, len(queries)))
