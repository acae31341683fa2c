"""Small PNG charts drawn with Pillow (no plotting library is a dependency).

Used for the training curves (the paper's Table II as a picture) and the demo report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]


def _font():
    return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        if t >= lo - 1e-9 * step:
            ticks.append(round(t, 10))
        t += step
    return ticks


def line_chart(
    ax,
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    title: str,
    xlabel: str = "",
) -> None:
    """Draw one panel. `ax` is (ImageDraw, (left, top, right, bottom))."""
    draw, (L, T, R, B) = ax
    font = _font()
    draw.text((L, T), title, fill="black", font=font)
    pl, pt, pr, pb = L + 48, T + 18, R - 10, B - 30
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not values or not x:
        draw.text((pl, pt + 20), "no data", fill="gray", font=font)
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1 = min(x), max(x)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def px(v):
        return pl + (v - x0) / (x1 - x0) * (pr - pl)

    def py(v):
        return pb - (v - lo) / (hi - lo) * (pb - pt)

    draw.rectangle((pl, pt, pr, pb), outline="black")
    for t in _nice_ticks(lo, hi):
        y = py(t)
        draw.line((pl - 3, y, pr, y), fill="#dddddd")
        draw.text((L, y - 5), f"{t:.3g}", fill="black", font=font)
    for t in _nice_ticks(x0, x1):
        xx = px(t)
        draw.line((xx, pb, xx, pb + 3), fill="black")
        draw.text((xx - 6, pb + 5), f"{t:g}", fill="black", font=font)
    if xlabel:
        draw.text(((pl + pr) // 2 - 3 * len(xlabel), pb + 16), xlabel, fill="black", font=font)
    for i, (name, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = [(px(a), py(b)) for a, b in zip(x, ys) if b is not None and math.isfinite(b)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for p in pts:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=color)
        draw.text((pr - 110, pt + 4 + 12 * i), name, fill=color, font=font)


def save_panels(path: str | Path, panels: list[dict], cols: int = 3, panel_size=(320, 220)) -> Path:
    """Save several line charts side by side. Each panel: {x, series, title, xlabel}."""
    rows = math.ceil(len(panels) / cols)
    w, h = panel_size
    img = Image.new("RGB", (w * min(cols, len(panels)), h * rows), "white")
    draw = ImageDraw.Draw(img)
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        line_chart((draw, (c * w + 4, r * h + 4, (c + 1) * w - 4, (r + 1) * h - 4)),
                   p["x"], p["series"], p["title"], p.get("xlabel", ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def bar_chart(path: str | Path, labels: Sequence[str], values: Sequence[float], title: str,
              size=(720, 260)) -> Path:
    """A vertical bar chart (e.g. the share of Ω per layer, the paper's Fig. 4)."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((8, 4), title, fill="black", font=font)
    pl, pt, pr, pb = 48, 22, w - 8, h - 34
    top = max(values) if values and max(values) > 0 else 1.0
    draw.rectangle((pl, pt, pr, pb), outline="black")
    for t in _nice_ticks(0, top):
        y = pb - t / top * (pb - pt)
        draw.line((pl - 3, y, pr, y), fill="#dddddd")
        draw.text((4, y - 5), f"{t:.3g}", fill="black", font=font)
    n = max(1, len(values))
    bw = (pr - pl) / n
    for i, (lab, v) in enumerate(zip(labels, values)):
        x0 = pl + i * bw + bw * 0.15
        x1 = pl + (i + 1) * bw - bw * 0.15
        draw.rectangle((x0, pb - v / top * (pb - pt), x1, pb), fill=PALETTE[0])
        draw.text((x0, pb + 4 + 10 * (i % 2)), str(lab), fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
