"""Aligned text tables: the one formatter behind every table simdex prints (query results,
SQL results, Table III, evaluation, label similarity). Pure strings in, a string out."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | set[int] = (),
               rule: bool = False, sep: str = "  ", min_widths: Sequence[int] = (), strip: bool = False) -> str:
    """Columns padded to their widest cell, `header` first.

    Args:
        header: column titles; rows: cells, already formatted as strings.
        right: the columns to right-align, as a set of indexes or one flag per column.
        rule: a line of dashes under the header.
        sep: between columns; min_widths: the least width of each column (in order).
        strip: remove trailing spaces from every line.

    Example:
        >>> print(text_table(["name", "n"], [["a", "10"], ["bb", "2"]], right={1}))
        name   n
        a     10
        bb     2
    """
    n = len(header)
    flags = [i in right for i in range(n)] if isinstance(right, set) else list(right) + [False] * (n - len(right))
    mins = list(min_widths) + [0] * (n - len(min_widths))
    widths = [max([mins[i], len(header[i])] + [len(r[i]) for r in rows]) for i in range(n)]

    def line(cells: Sequence[str]) -> str:
        text = sep.join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, flags, strict=True))
        return text.rstrip() if strip else text

    lines = [line(header)] + ([line(["-" * w for w in widths])] if rule else []) + [line(r) for r in rows]
    return "\n".join(lines)
