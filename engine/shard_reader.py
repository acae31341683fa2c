"""The one reader of a catalog's object shards: pyarrow.dataset underneath.

Shards of different sources carry different metadata columns; the reader scans them under
one unified schema (a column a shard lacks reads as null), in commit order. It serves the
build (feature batches), label statistics and evaluation (features with metadata columns),
the searcher's `--where` filter and SQL (the dataset itself), and the searcher's metadata
look-up of a few ids (`take`, which reads only the row groups that can hold them).

`Catalog.shards()` makes one; nobody else opens a shard file for reading.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# A batch of features holds at most this many bytes (rows = this / (4 · N), at most `batch_rows`):
# at 4,000 features (mask+grid2) 65,536 rows were 1 GB in flight and took the 70k build over 2 GB
FEATURE_BATCH_BYTES = 64 << 20


class ShardReader:
    """Read committed object shards (`paths`, in commit order) of a catalog with N features.

    Example:
        >>> reader = Catalog.open("cat/").shards()                           # doctest: +SKIP
        >>> for batch in reader.batches(["object_id", "label", "features"]):  # doctest: +SKIP
        ...     ids, X = feature_arrays(batch, reader.num_features)
    """

    def __init__(self, paths: Sequence[Path], num_features: int, empty_schema: pa.Schema):
        self.paths = [Path(p) for p in paths]
        self.num_features = int(num_features)
        self._empty_schema = empty_schema

    @cached_property
    def schema(self) -> pa.Schema:
        """The shards' schemas unified by column name (the base schema when there are no shards)."""
        if not self.paths:
            return self._empty_schema
        return pa.unify_schemas([pq.read_schema(p) for p in self.paths], promote_options="permissive")

    @property
    def columns(self) -> list[str]:
        """Every column but `features`, in schema order."""
        return [n for n in self.schema.names if n != "features"]

    def shard_rows(self) -> list[int]:
        """Rows of each shard, in commit order (from the Parquet footers: no data is read)."""
        return [pq.read_metadata(p).num_rows for p in self.paths]

    def subset(self, start: int, stop: int) -> ShardReader:
        """A reader of shards [start, stop) of this one (one task's share of a parallel build pass)."""
        return ShardReader(self.paths[start:stop], self.num_features, self._empty_schema)

    def dataset(self):
        """A pyarrow dataset over the shards (for DuckDB and filters)."""
        import pyarrow.dataset as ds

        if not self.paths:
            return ds.dataset(self._empty_schema.empty_table())
        return ds.dataset([str(p) for p in self.paths], schema=self.schema, format="parquet")

    def batches(self, columns: Sequence[str], batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """Record batches of `columns` (at most `batch_rows` rows), in commit order; missing columns are null."""
        unknown = [c for c in columns if c not in self.schema.names]
        if unknown:
            raise KeyError(f"no column {', '.join(unknown)}; the objects have {', '.join(self.columns)}")
        if not self.paths:
            return
        import pyarrow.dataset as ds

        # no read-ahead: the default of 16 batches of 4 files held 2+ GB of a build pass at 512 features;
        # no pre-buffering of a file's column chunks (for object stores; on a local disk it only holds memory)
        scanner = self.dataset().scanner(columns=list(columns), batch_size=batch_rows, use_threads=False,
                                         batch_readahead=1, fragment_readahead=1,
                                         fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch

    def iter_features(self, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(object_ids int64 (n,), features float32 (n, N)) batch by batch, at most `batch_rows` rows
        and FEATURE_BATCH_BYTES of features each."""
        batch_rows = max(1, min(batch_rows, FEATURE_BATCH_BYTES // (4 * max(self.num_features, 1))))
        for batch in self.batches(["object_id", "features"], batch_rows):
            yield feature_arrays(batch, self.num_features)

    def features_of(self, object_ids) -> np.ndarray:
        """Raw feature vectors (len(object_ids), N) float32 of the given objects, in that order.

        Raises:
            KeyError: an id no shard holds.
        """
        want = np.asarray(object_ids, dtype=np.int64).ravel()
        out = np.empty((len(want), self.num_features), np.float32)
        found = np.zeros(len(want), bool)
        for ids, x in self.iter_features():
            hit = np.isin(want, ids)
            if hit.any():
                pos = np.searchsorted(ids, want[hit]) if np.all(np.diff(ids) > 0) else \
                    np.array([np.flatnonzero(ids == i)[0] for i in want[hit]])
                out[hit], found[hit] = x[pos], True
            if found.all():
                break
        if not found.all():
            raise KeyError(f"no object {', '.join(map(str, want[~found][:5]))} in the shards")
        return out

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows without `features` (every column, or `columns` in that order)."""
        want = self.columns if columns is None else list(columns)
        unknown = [c for c in want if c not in self.schema.names]
        if unknown:
            raise KeyError(f"no column {', '.join(unknown)}; the objects have {', '.join(self.columns)}")
        if not self.paths:
            return self._empty_schema.empty_table().select(want)
        return self.dataset().to_table(columns=want, use_threads=False)

    def take(self, object_ids: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata rows of `object_ids`, in that order, reading only the row groups that hold them.

        A query by id prints a handful of rows: this reads them with pyarrow.parquet alone,
        because pyarrow.dataset (and `Table.filter/take`) import pyarrow.compute, which costs a
        query by id ~0.3 s of start-up.
        """
        object_ids = np.asarray(object_ids, dtype=np.int64)
        wanted = set(object_ids.tolist())
        found: dict[int, pa.Table] = {}
        for path in self.paths:
            if len(found) == len(wanted):
                break
            pf = pq.ParquetFile(path)
            names = [n for n in pf.schema_arrow.names if n != "features"]
            if columns is not None:
                names = ["object_id"] + [c for c in columns if c in names and c != "object_id"]
            col = pf.schema_arrow.get_field_index("object_id")
            groups = []
            for g in range(pf.num_row_groups):
                st = pf.metadata.row_group(g).column(col).statistics
                if st is None or not st.has_min_max or any(st.min <= i <= st.max for i in wanted):
                    groups.append(g)
            if groups:
                t = pf.read_row_groups(groups, columns=names)
                ids = t.column("object_id").to_numpy()
                for row in np.flatnonzero(np.isin(ids, object_ids)):  # not a Python loop over every row read
                    found[int(ids[row])] = t.slice(int(row), 1)
        parts = [found[i] for i in object_ids.tolist() if i in found]
        if not parts:
            return pa.table({"object_id": pa.array([], pa.int64())})
        return pa.concat_tables(parts, promote_options="default")


def feature_arrays(batch: pa.RecordBatch, num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(object_ids int64 (n,), features float32 (n, N)) of a batch with those two columns."""
    ids = batch.column("object_id").to_numpy().astype(np.int64, copy=False)
    values = batch.column("features").flatten().to_numpy(zero_copy_only=False)  # respects slicing
    return ids, values.reshape(len(ids), num_features).astype(np.float32, copy=False)


def column_values(batch: pa.RecordBatch | pa.Table, name: str) -> np.ndarray:
    """A column as an object array (None for nulls), e.g. labels or splits."""
    return np.array(batch.column(name).to_pylist(), dtype=object)
