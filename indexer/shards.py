"""Shard writing: object rows and error rows as Arrow, streamed into a catalog's temporary
shard files in row groups, then handed to `Catalog.commit` (which renames and journals them).

Memory is bounded by one row group (`row_group_rows` rows), whatever the shard's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simdex.engine.catalog import ERRORS_SCHEMA, OBJECT_BASE_SCHEMA, RESERVED_COLUMNS, Catalog

log = logging.getLogger(__name__)


def metadata_schema(records, columns: list[str]) -> list[tuple[str, str, pa.DataType]]:
    """(source key, column name, Arrow type) of each metadata column of a source.

    Types are inferred from every record's values (all-null columns become strings); a
    name that clashes with an object column is stored as `meta_<name>`.
    """
    out = []
    for key in columns:
        try:
            typ = pa.array([r.metadata.get(key) for r in records]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep their text
            typ = pa.string()
        if pa.types.is_null(typ):
            typ = pa.string()
        name = f"meta_{key}" if key in RESERVED_COLUMNS else str(key)
        out.append((key, name, typ))
    return out


def object_schema(num_features: int, meta: list[tuple[str, str, pa.DataType]]) -> pa.Schema:
    fields = []
    for f in OBJECT_BASE_SCHEMA:
        if f.name == "features":
            continue
        fields.append(f)
        if f.name == "label":
            fields += [pa.field(name, typ) for _, name, typ in meta]
    fields.append(pa.field("features", pa.list_(pa.float32(), num_features)))
    return pa.schema(fields)


class ShardWriter:
    """Writes one shard (objects) and its errors to temporary files of a catalog.

    Example:
        >>> w = ShardWriter(catalog, schema)                      # doctest: +SKIP
        >>> w.add_objects(columns, features); w.add_errors(rows)  # doctest: +SKIP
        >>> shard_tmp, errors_tmp = w.close()                     # doctest: +SKIP
    """

    def __init__(self, catalog: Catalog, schema: pa.Schema, row_group_rows: int = 4096,
                 compression: str = "zstd"):
        self.catalog = catalog
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.rows = 0
        self.error_rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._errors: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self.shard_tmp: Path | None = None

    def add_objects(self, columns: dict[str, object], features: np.ndarray) -> None:
        """Append object rows: `columns` maps every non-feature column of the schema to
        an array or list of equal length; `features` is float32 (n, N)."""
        n = len(features)
        if n == 0:
            return
        width = self.schema.field("features").type.list_size
        flat = pa.array(np.ascontiguousarray(features, dtype=np.float32).reshape(-1), pa.float32())
        arrays = []
        for f in self.schema:
            if f.name == "features":
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, width))
            else:
                arrays.append(pa.array(columns[f.name], type=f.type))
        self._pending.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self._pending_rows += n
        self.rows += n
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def add_errors(self, rows: list[dict]) -> None:
        """Append error rows: dicts with image_id, source, ordinal, label, reason, detail."""
        self._errors.extend(rows)
        self.error_rows += len(rows)

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self.shard_tmp = self.catalog.new_temp_path("shard")
            # No dictionary and no min/max statistics for the features: thousands of distinct floats
            # per row make both pure cost (a quarter of the write's CPU), and no reader uses them.
            others = [f.name for f in self.schema if f.name != "features"]
            self._writer = pq.ParquetWriter(self.shard_tmp, self.schema, compression=self.compression,
                                            use_dictionary=others, write_statistics=others)
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._writer.write_table(table, row_group_size=max(self.row_group_rows, table.num_rows))
        self._pending, self._pending_rows = [], 0

    def close(self) -> tuple[Path | None, Path | None]:
        """Finish the files; return (objects temp file or None, errors temp file or None)."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        errors_tmp = None
        if self._errors:
            errors_tmp = self.catalog.new_temp_path("errors")
            pq.write_table(pa.Table.from_pylist(self._errors, schema=ERRORS_SCHEMA), errors_tmp,
                           compression=self.compression)
        return self.shard_tmp, errors_tmp

    def abort(self) -> None:
        """Drop what was written (the temporary files)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.shard_tmp is not None:
            self.shard_tmp.unlink(missing_ok=True)
