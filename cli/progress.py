"""A one-line progress bar for long jobs: done/total, items/s and ETA, on stderr.

Library code reports progress through callbacks; only the CLI draws.
"""

from __future__ import annotations

import sys
import time


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "--:--"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def stage_unit(stage: str) -> str:
    """The unit of a build's, an evaluation's or the demo's progress stage: queries, learned Ω's
    optimisation steps (`learned Ω (COLUMN)`), else objects."""
    return "q" if stage == "queries" else "step" if stage.startswith("learned") else "obj"


class ProgressBar:
    """Usage: bar = ProgressBar(total, "indexing", unit="img"); bar.update(n, extra="..."); bar.close()."""

    def __init__(self, total: int, label: str, unit: str = "it", enabled: bool = True, stream=None,
                 min_interval_s: float = 0.2):
        self.total, self.label, self.unit = max(0, int(total)), label, unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.min_interval_s = min_interval_s
        self._tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= self.min_interval_s or self.done >= self.total):
            self._last_draw = now
            self._draw(extra)

    def set(self, done: int, extra: str = "") -> None:
        self.update(done - self.done, extra)

    def _draw(self, extra: str) -> None:
        elapsed = time.perf_counter() - self.start
        # The first half second says nothing about the rate (start-up, one batch done at once).
        rate = self.done / elapsed if elapsed > 0.5 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        frac = self.done / self.total if self.total else 1.0
        width = 24
        filled = int(width * min(1.0, frac))
        bar = "#" * filled + "-" * (width - filled)
        rate_text = f"{rate:,.0f}" if rate else "-"
        line = (f"{self.label} [{bar}] {self.done:,}/{self.total:,} {100 * frac:5.1f}% "
                f"{rate_text} {self.unit}/s ETA {_fmt_seconds(eta)}" + (f" {extra}" if extra else ""))
        if self._tty:
            self.stream.write("\r" + line + "\033[K")
        elif (self.done >= self.total or elapsed - getattr(self, "_last_line", -10.0) >= 10.0) \
                and getattr(self, "_last_done", None) != self.done:
            # Not a terminal (a log file, CI): a full line every 10 s instead of carriage returns.
            self._last_line, self._last_done = elapsed, self.done
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, extra: str = "") -> None:
        if self.enabled:
            self._draw(extra)
            if self._tty:
                self.stream.write("\n")
                self.stream.flush()
