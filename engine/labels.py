"""Label similarity from internal representations (DESIGN §7, after Park, "Finding Similar
Labels with Internal Representations").

For every label c of a catalog (the `label` column, or another), over the raw features
(each one channel of a layer of φ, averaged over the object's window):

1. the class prototype: the per-channel mean of the class's objects, m_c (N,);
2. a one-sided Welch t-test per channel, class vs the rest of the objects:
   t_cj = (m_cj − m_rj) / √(s²_cj/n_c + s²_rj/n_r), Welch–Satterthwaite degrees of freedom,
   p_cj = P(T > t_cj): small when the channel fires more for c than for the other labels;
3. the significance vector s_c: s_cj = t_cj where p_cj < α/m (Bonferroni over the m channels
   that vary at all), else 0. t rather than −log p, because −log p grows like t²/2 and
   would let a few extreme channels dominate; thresholding keeps only the channels that
   characterise the label;
4. labels are ranked by the cosine of their significance vectors to the chosen label's
   (labels that excite the same channels beyond chance are similar), and, beside it, by
   the cosine of their prototypes (the plain baseline).

Everything comes from one streaming pass that keeps per-label counts, Σx and Σx² in
float64 (memory: labels × N, whatever the catalog's size); the rest's statistics are the
totals minus the label's. Tombstoned objects are left out.

Example:
    >>> result = label_similarity(Catalog.open("cat/"), "Ankle boot", split="train")   # doctest: +SKIP
    >>> [r["label"] for r in result.table.to_pylist()][:2]                             # doctest: +SKIP
    ['Sneaker', 'Sandal']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simdex.engine.catalog import Catalog
from simdex.engine.errors import SimdexError
from simdex.engine.omega import ClassStats
from simdex.engine.shard_reader import column_values, feature_arrays

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.01


class LabelError(SimdexError, ValueError):
    """A label similarity that cannot be computed as asked; the message says how to fix it."""


@dataclass
class LabelStatistics:
    """Per-label count, Σx and Σx² of the raw features (float64)."""

    column: str
    rows: str  # which rows were used: "all" or "split = train"
    labels: list[str]
    counts: np.ndarray  # (C,)
    sums: np.ndarray  # (C, N)
    sumsq: np.ndarray  # (C, N)

    def prototypes(self) -> np.ndarray:
        """Per-channel means m_c (C, N)."""
        return self.sums / self.counts[:, None]


def label_statistics(catalog: Catalog, column: str = "label", split: str | None = None,
                     split_column: str = "split", batch_rows: int = 4096,
                     progress: Callable[[int], None] | None = None) -> LabelStatistics:
    """Stream over the catalog's shards and accumulate per-label statistics.

    Args:
        catalog: an open catalog.
        column: the column of labels; objects whose label is null are skipped.
        split: use only objects whose `split_column` equals this value (e.g. "train").
        batch_rows: rows per batch (memory is one batch of raw features plus labels × N).
        progress: optional callback with the number of rows read so far.

    Raises:
        LabelError: no such column, no such split, or fewer than 2 labels.
    """
    reader = catalog.shards()
    columns = sorted(reader.columns)
    if column not in columns:
        raise LabelError(f"no column {column!r} in the objects; they have {', '.join(columns) or 'no rows'}")
    if split is not None and split_column not in columns:
        raise LabelError(f"--split {split}: the objects have no {split_column!r} column "
                         f"(columns: {', '.join(columns)}); leave --split out to use every object")
    deleted = catalog.deleted_ids()
    acc = ClassStats(catalog.num_features)  # per label: count, Σx (N,), Σx² (N,) in float64
    seen_splits: set = set()
    done = 0
    want = ["object_id", column, "features"] + ([split_column] if split is not None else [])
    for batch in reader.batches(want, batch_rows):
        ids, x = feature_arrays(batch, catalog.num_features)
        labels = column_values(batch, column)
        keep = ~np.isin(ids, deleted) if len(deleted) else np.ones(len(ids), bool)
        if split is not None:
            values = column_values(batch, split_column)
            seen_splits.update(v for v in values if v is not None)
            keep &= values == split
        if keep.any():
            labels = np.array([None if v is None else str(v) for v in labels[keep]], dtype=object)
            acc.update(x[keep], labels)
        done += len(ids)
        if progress:
            progress(done)
    if split is not None and split not in seen_splits:
        raise LabelError(f"--split {split}: no object has {split_column} = {split!r}; "
                         f"values: {', '.join(sorted(map(str, seen_splits)))}")
    if len(acc.classes) < 2:
        raise LabelError(f"label similarity needs at least 2 labels in column {column!r}, found {len(acc.classes)}")
    order = sorted(acc.classes)
    slots = [acc.classes[c] for c in order]
    return LabelStatistics(column=column, rows="all" if split is None else f"{split_column} = {split}",
                           labels=list(order), counts=acc.counts[slots],
                           sums=acc.sums()[slots], sumsq=acc.sumsq()[slots])


# ---------------------------------------------------------------------- Student's t

def t_log_sf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """log P(T > t) for Student's t with `df` degrees of freedom, elementwise (scipy.stats).

    Where p is below float64's range (≈ 1e-308: e.g. t = 100 with df = 1000) scipy returns −inf;
    Park's test only asks whether p < α/m (≈ 1e-5), which −inf answers correctly. (simdex wrote
    this tail by hand before, exact in log space that far out; scipy agrees with it to 1e-9
    wherever it is finite, and nothing reads the value beyond the threshold.)

    Example:
        >>> round(float(np.exp(t_log_sf(np.array([1.0]), np.array([1.0]))[0])), 12)  # Cauchy: 1/2 − atan(1)/π
        0.25
    """
    from scipy import stats

    with np.errstate(divide="ignore"):
        return stats.t.logsf(np.asarray(t, dtype=np.float64), np.asarray(df, dtype=np.float64))


# ---------------------------------------------------------------------- Park's test and ranking

@dataclass
class WelchTests:
    """One-sided Welch tests, every label vs the rest, per channel."""

    t: np.ndarray  # (C, N), 0 where the channel does not vary
    df: np.ndarray  # (C, N)
    log10_p: np.ndarray  # (C, N) log10 P(T > t)
    tested: np.ndarray  # bool (C, N): the channel varies in the label or the rest


def welch_one_sided(stats: LabelStatistics) -> WelchTests:
    """t, degrees of freedom and one-sided p of each label vs the rest, per channel."""
    n_c = stats.counts[:, None]
    n_all = stats.counts.sum()
    n_r = n_all - n_c
    if np.any(n_c < 2) or np.any(n_r < 2):
        small = [lab for lab, n in zip(stats.labels, stats.counts) if n < 2]
        raise LabelError(f"a Welch test needs at least 2 objects per label; too few for {', '.join(small)}")
    sum_r = stats.sums.sum(axis=0) - stats.sums
    sumsq_r = stats.sumsq.sum(axis=0) - stats.sumsq
    m_c, m_r = stats.sums / n_c, sum_r / n_r
    var_c = np.maximum((stats.sumsq - n_c * m_c**2) / (n_c - 1), 0.0)
    var_r = np.maximum((sumsq_r - n_r * m_r**2) / (n_r - 1), 0.0)
    se_c, se_r = var_c / n_c, var_r / n_r
    se2 = se_c + se_r
    # variances below float64 round-off of Σx² are no variation at all (e.g. a dead channel)
    scale = np.maximum(stats.sumsq.sum(axis=0) / n_all, 1e-300)
    tested = se2 > 1e-12 * scale / n_all
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(tested, (m_c - m_r) / np.sqrt(se2), 0.0)
        df = np.where(tested, se2**2 / (se_c**2 / (n_c - 1) + se_r**2 / (n_r - 1)), 1.0)
    df = np.where(np.isfinite(df) & (df > 0), df, 1.0)
    log10_p = t_log_sf(t, df) / math.log(10)
    return WelchTests(t=t, df=df, log10_p=np.where(tested, log10_p, 0.0), tested=tested)


def significance_vectors(tests: WelchTests, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """s_cj = t_cj where p_cj < α/m (Bonferroni over the m tested channels), else 0: (C, N)."""
    m = max(int(tests.tested.any(axis=0).sum()), 1)
    significant = tests.tested & (tests.log10_p < math.log10(alpha / m)) & (tests.t > 0)
    return np.where(significant, tests.t, 0.0)


def _cosine_to(matrix: np.ndarray, row: int) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = matrix @ matrix[row] / (norms * norms[row])
    return np.nan_to_num(cos, nan=0.0)


def _ranks(scores: np.ndarray, exclude: int, labels: list[str]) -> np.ndarray:
    """1 for the best score (ties by label), the excluded row gets 0."""
    order = sorted((i for i in range(len(scores)) if i != exclude), key=lambda i: (-scores[i], labels[i]))
    ranks = np.zeros(len(scores), np.int32)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


@dataclass
class LabelSimilarity:
    label: str
    objects: int
    significant_channels: int  # channels significantly higher for `label` than for the rest
    tested_channels: int
    alpha: float
    column: str
    rows: str
    table: pa.Table  # one row per other label, best first by the Welch ranking

    def summary(self) -> str:
        return (f"{self.label!r}: {self.objects:,} objects ({self.column}, rows: {self.rows}); "
                f"{self.significant_channels} of {self.tested_channels} channels fire significantly more "
                f"than for the other labels (one-sided Welch, p < {self.alpha:g}/{self.tested_channels})")


def label_similarity(catalog: Catalog, label: str, column: str = "label", split: str | None = None,
                     alpha: float = DEFAULT_ALPHA, stats: LabelStatistics | None = None) -> LabelSimilarity:
    """Rank the other labels by similarity to `label` (Park), with the prototype cosine beside it.

    Args:
        catalog: an open catalog whose objects carry labels.
        label: the label to compare the others with.
        column: the column of labels.
        split: only objects of this split (e.g. "train").
        alpha: family-wise significance level of the per-channel tests (Bonferroni).
        stats: statistics already accumulated by `label_statistics` (skips the pass).

    Returns:
        `LabelSimilarity` whose table has, per other label: label, objects, welch_rank,
        welch_similarity (cosine of significance vectors), shared_channels (significant for
        both), significant_channels, prototype_rank, prototype_cosine.

    Raises:
        LabelError: unknown label (the message lists the labels), bad column or split.
    """
    if not 0 < alpha < 1:
        raise LabelError(f"alpha must be in (0, 1), got {alpha}")
    stats = stats or label_statistics(catalog, column, split)
    if label not in stats.labels:
        known = ", ".join(f"{lab} ({n:,})" for lab, n in zip(stats.labels, stats.counts.astype(int)))
        raise LabelError(f"no label {label!r} in column {column!r} ({stats.rows}); labels: {known}")
    row = stats.labels.index(label)
    tests = welch_one_sided(stats)
    s = significance_vectors(tests, alpha)
    welch = _cosine_to(s, row)
    proto = _cosine_to(stats.prototypes(), row)
    welch_rank, proto_rank = _ranks(welch, row, stats.labels), _ranks(proto, row, stats.labels)
    sig = s > 0
    others = sorted((i for i in range(len(stats.labels)) if i != row), key=lambda i: welch_rank[i])
    table = pa.table({
        "label": pa.array([stats.labels[i] for i in others], pa.string()),
        "objects": pa.array([int(stats.counts[i]) for i in others], pa.int64()),
        "welch_rank": pa.array([int(welch_rank[i]) for i in others], pa.int32()),
        "welch_similarity": pa.array([float(welch[i]) for i in others], pa.float64()),
        "shared_channels": pa.array([int((sig[i] & sig[row]).sum()) for i in others], pa.int32()),
        "significant_channels": pa.array([int(sig[i].sum()) for i in others], pa.int32()),
        "prototype_rank": pa.array([int(proto_rank[i]) for i in others], pa.int32()),
        "prototype_cosine": pa.array([float(proto[i]) for i in others], pa.float64()),
    })
    return LabelSimilarity(label=label, objects=int(stats.counts[row]), significant_channels=int(sig[row].sum()),
                           tested_channels=int(tests.tested.any(axis=0).sum()), alpha=alpha, column=stats.column,
                           rows=stats.rows, table=table)
