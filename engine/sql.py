"""SQL over a catalog (DESIGN §6): a locked-down, in-process DuckDB with views over the
shards, the current build, the errors and search results.

Views (all read-only; tombstoned objects are hidden, as in every query result):

    objects         one row per object: object_id, image_id, source, ordinal, component, label,
                    the source's metadata columns (e.g. split), x0, y0, x1, y1, area
    features        object_id, features FLOAT[N] (the raw vector; SQL lists are 1-based)
    errors          inputs that gave no object: image_id, source, ordinal, label, reason, detail
    deleted         object_id of every tombstoned object
    layers          φ: layer, channels, stride, first_feature (0-based offset into features)
    build           one row about the current build (version, objects, kept, Ω estimator, τ, …)
    kept_features   one row per kept feature: j (0-based position in z and Ω), feature (0-based
                    index into the raw vector: `features[feature + 1]` in SQL), layer, channel,
                    mean, std (the z-score), omega, v1 (loading on v_1), z_min, z_max
    table_iii       the paper's Table III: layer, initial, active, kept (and a `total` row)
    results         search, query, rank, object_id, score: the answers to `searches`

Macros:

    simdex_p(a, b [, tau := τ])   P(v_a|v_b) of eq. 4 with the Gaussian membership (eq. 2) for two
                                  raw feature vectors, with the build's row map (`--row-norm`), kept
                                  features, z-score and Ω (on l2 rows where the build's Ω is);
                                  agrees with `Searcher.search` to float32 round-off
    simdex_z(a)                   the z-scored kept features of a raw vector (DOUBLE[d])

Safety: everything is registered from Python (Arrow datasets over the catalog's shard files
and in-memory tables), then the connection is locked: `enable_external_access = false`
(no file, extension or network access from SQL: COPY, ATTACH, read_csv/read_parquet, INSTALL,
LOAD of anything not built in, EXPORT all fail), extension autoinstall/autoload off, Python
replacement scans off, spilling to a temporary folder off (`temp_directory = ''`), a memory
limit (`memory_limit`, default DEFAULT_MEMORY_LIMIT), and `lock_configuration = true` so no
SET, RESET or PRAGMA can undo it. The database is in memory: a CREATE TABLE lives and dies
with the session, and nothing reaches the disk. Every statement runs in a worker thread under
a time limit (default DEFAULT_TIMEOUT_S); past it, or on Ctrl-C / SIGTERM in the caller's
thread, the statement is stopped at once with `connection.interrupt()`. `--where` filters run
in this same session (`object_ids_where`): the predicate is parsed as exactly one SQL
expression (`duckdb.SQLExpression`), so `1=0 UNION SELECT 5` or a second statement is refused.

Example:
    >>> with SqlSession.open("cat/") as s:                                    # doctest: +SKIP
    ...     s.query("SELECT label, count(*) AS n FROM objects GROUP BY 1").to_pylist()
    [{'label': 'Sneaker', 'n': 7000}, ...]
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simdex.engine.catalog import Catalog
from simdex.engine.errors import SimdexError

log = logging.getLogger(__name__)

DEFAULT_K = 10
DEFAULT_TIMEOUT_S = 300.0  # a statement running longer is stopped (0 or None: no limit)
DEFAULT_MEMORY_LIMIT = "2GB"  # DuckDB's own default is 80 % of the machine's RAM
INTERRUPT_GRACE_S = 5.0  # how long an interrupted statement may take to unwind
_MEMORY_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|KIB|MB|MIB|GB|GIB|TB|TIB)\s*$", re.IGNORECASE)
_SEARCH_RE = re.compile(r"^\s*(\d+(?:\s*,\s*\d+)*)\s*(?:\s(?:k\s*=\s*)?(\d+))?\s*$")
RESULTS_SCHEMA = pa.schema([("search", pa.int32()), ("query", pa.string()), ("rank", pa.int32()),
                            ("object_id", pa.int64()), ("score", pa.float32())])
BUILD_VIEWS = ("build", "kept_features", "table_iii")
# hints added to DuckDB's message when a view is missing for a known reason
_NO_RESULTS_HINT = "the results view exists only with searches: simdex sql --search \"ID [k]\" …"


class SqlError(SimdexError):
    """A SQL statement that failed or was refused; the message is DuckDB's, with a hint."""


class SqlTimeout(SqlError):
    """A statement that ran past the session's time limit and was stopped."""


@dataclass(frozen=True)
class SearchSpec:
    """One search whose answers go into the `results` view: object ids (one = Gaussian,
    several = one set, trapezoid) and the number of answers k."""

    ids: tuple[int, ...]
    k: int = DEFAULT_K

    @property
    def label(self) -> str:
        return ",".join(map(str, self.ids))

    @classmethod
    def parse(cls, text: str, default_k: int = DEFAULT_K) -> SearchSpec:
        """Parse "ID [k]", "ID,ID,… [k]" or "ID k=20".

        Raises:
            SqlError: anything else, with the accepted forms.

        Example:
            >>> SearchSpec.parse("42,43 20")
            SearchSpec(ids=(42, 43), k=20)
        """
        m = _SEARCH_RE.match(text)
        if not m:
            raise SqlError(f"bad search {text!r}: write \"ID [k]\" or \"ID,ID,… [k]\", e.g. \"42\" or \"42,43 20\"")
        ids = tuple(int(v) for v in m.group(1).split(","))
        k = int(m.group(2)) if m.group(2) else default_k
        if k < 1:
            raise SqlError(f"bad search {text!r}: k must be ≥ 1")
        return cls(ids, k)


def _float_list(values: np.ndarray) -> str:
    """A DuckDB DOUBLE[] literal that round-trips float64 exactly."""
    return "([" + ", ".join(repr(float(v)) for v in np.asarray(values, dtype=np.float64)) + "]::DOUBLE[])"


def _int_list(values: np.ndarray) -> str:
    return "([" + ", ".join(str(int(v)) for v in values) + "]::INTEGER[])"


class SqlSession:
    """A DuckDB connection over one catalog, read-only and unable to reach outside it.

    Args:
        catalog: an open catalog (a build is needed only for the build views, the macros
            and `searches`).
        searches: searches whose answers fill the `results` view.
        tau: τ of the searches and the default τ of `simdex_p` (default: the build's).
        exact: answer the searches by scanning the whole catalog.
        timeout_s: a statement running longer is stopped (None or 0: no limit).
        memory_limit: DuckDB's memory_limit, e.g. "2GB"; a statement needing more fails.
        searcher: the current build's searcher when the caller has one already (no reload).

    Raises:
        SqlError: searches without a build, a search that cannot be answered, bad limits.
        CatalogError / SearchError: from the catalog and the searcher.
    """

    def __init__(self, catalog: Catalog, searches: Sequence[SearchSpec] = (), tau: float | None = None,
                 exact: bool = False, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 memory_limit: str = DEFAULT_MEMORY_LIMIT, searcher=None):
        import duckdb

        if timeout_s is not None and not timeout_s >= 0:
            raise SqlError(f"the time limit must be ≥ 0 seconds (0: none), got {timeout_s}")
        if not _MEMORY_RE.match(str(memory_limit)):
            raise SqlError(f"bad memory limit {memory_limit!r}: write a size such as 512MB or 4GB")
        self.timeout_s = float(timeout_s) if timeout_s else None
        self.memory_limit = str(memory_limit).strip()
        self.catalog = catalog
        self.searcher = searcher
        build = catalog.current_build() if searcher is None else None
        if build is not None:
            from simdex.engine.searcher import Searcher

            self.searcher = Searcher(catalog, build)
        elif searches and self.searcher is None:
            raise SqlError(f"catalog {catalog.root} has no build yet, so it cannot be searched; "
                           f"run `simdex build --catalog {catalog.root}` first")
        if tau is not None and not tau > 0:
            raise SqlError(f"tau must be positive, got {tau}")
        self.tau = float(tau) if tau is not None else (self.searcher.tau if self.searcher else 1.0)
        self.views: dict[str, str] = {}
        self._duckdb = duckdb
        self.con = duckdb.connect(":memory:")
        try:
            self._register_objects()
            self._register_small_tables()
            if self.searcher is not None:
                self._register_build()
            self._register_results(searches, exact)
            self._lock()
        except BaseException:
            self.con.close()
            raise

    @classmethod
    def open(cls, root: str | os.PathLike, searches: Sequence[SearchSpec] = (), tau: float | None = None,
             exact: bool = False, timeout_s: float | None = DEFAULT_TIMEOUT_S,
             memory_limit: str = DEFAULT_MEMORY_LIMIT) -> SqlSession:
        """Open the catalog at `root` and make a session over it (see the class)."""
        return cls(Catalog.open(root), searches, tau, exact, timeout_s, memory_limit)

    # ------------------------------------------------------------------ views

    def _view(self, name: str, sql: str, what: str) -> None:
        self.con.execute(f"CREATE VIEW {name} AS {sql}")
        self.views[name] = what

    def _register_objects(self) -> None:
        # shards of different sources carry different metadata columns: the reader scans them under one schema
        self.con.register("_shards", self.catalog.shards().dataset())
        self.con.register("_deleted", pa.table({"object_id": pa.array(self.catalog.deleted_ids(), pa.int64())}))
        self._view("deleted", "SELECT object_id FROM _deleted", "object_id of every tombstoned (hidden) object")
        live = "WHERE object_id NOT IN (SELECT object_id FROM _deleted)"
        self._view("objects", f"SELECT * EXCLUDE (features) FROM _shards {live}",
                   "one row per object: ids, source, label, metadata, bounding box, area")
        self._view("features", f"SELECT object_id, features FROM _shards {live}",
                   f"object_id, features FLOAT[{self.catalog.num_features}] (raw vector, 1-based in SQL)")

    def _register_small_tables(self) -> None:
        self.con.register("_errors", self.catalog.read_errors())
        self._view("errors", "SELECT * FROM _errors", "inputs that gave no object, with the reason")
        phi = self.catalog.phi
        self.con.register("_layers", pa.table({
            "layer": pa.array([p["name"] for p in phi], pa.string()),
            "channels": pa.array([p["channels"] for p in phi], pa.int32()),
            "stride": pa.array([p["stride"] for p in phi], pa.int32()),
            "first_feature": pa.array([p["offset"] for p in phi], pa.int32())}))
        self._view("layers", "SELECT * FROM _layers", "φ: layer, channels, stride, first_feature (0-based)")

    def _register_build(self) -> None:
        s = self.searcher
        info = s.info
        v1, z_min, z_max = s.pruning.v1_kept, s.pruning.z_min, s.pruning.z_max
        kept = np.asarray(s.kept, dtype=np.int64)
        offsets = np.array([p["offset"] for p in self.catalog.phi])
        which = np.searchsorted(offsets, kept, side="right") - 1
        names = [self.catalog.phi[i]["name"] for i in which]
        omega = np.asarray(s.omega, dtype=np.float64)
        omega = omega / omega.sum()
        self.con.register("_kept_features", pa.table({
            "j": pa.array(np.arange(len(kept)), pa.int32()),
            "feature": pa.array(kept, pa.int32()),
            "layer": pa.array(names, pa.string()),
            "channel": pa.array(kept - offsets[which], pa.int32()),
            "mean": pa.array(s.mean, pa.float64()), "std": pa.array(s.std, pa.float64()),
            "omega": pa.array(omega, pa.float64()), "v1": pa.array(v1, pa.float64()),
            "z_min": pa.array(z_min, pa.float64()), "z_max": pa.array(z_max, pa.float64())}))
        self._view("kept_features", "SELECT * FROM _kept_features",
                   "kept features: j, feature, layer, channel, mean, std, omega, v1, z_min, z_max")
        self.con.register("_table_iii", pa.Table.from_pylist(
            info["table_iii"], schema=pa.schema([("layer", pa.string()), ("initial", pa.int32()),
                                                 ("active", pa.int32()), ("kept", pa.int32())])))
        self._view("table_iii", "SELECT * FROM _table_iii", "Table III: per layer, initial, active, kept")
        recall = info.get("recall", {})
        self.con.register("_build", pa.table({
            "version": [s.version], "created": [info.get("created")], "objects": [int(info["objects"])],
            "num_features": [int(info["num_features"])], "active": [int(info["active"])], "kept": [int(info["kept"])],
            "retained": [float(info["retained"])], "row_norm": [s.pruning.row_norm], "omega": [info["omega"]["estimator"]],
            "omega_classes_from": [info["omega"].get("classes_from")], "tau": [s.tau],
            "candidates": [json.dumps(info.get("candidates"))],
            "recall_at_10": [recall.get("recall_at_10_mean")]}))
        self._view("build", "SELECT * FROM _build", "the current build: version, objects, kept, row_norm, Ω, τ, recall")

        # eq. 4 with eq. 2 after z-scoring: g_j = exp(−((z_aj − z_bj)/τ)²) and z_aj − z_bj = (a_kj − b_kj)/σ_j,
        # a and b first scaled by the build's row map (`row_normalise`): sa, sb = 1 (none) or 1/‖·‖ (l2),
        # computed once per call and bound by a one-element list_transform, not once per feature.
        # Where the build's Ω is measured on l2 rows (`engine.row_map`) the scale is 1/‖a_kept‖ and σ is σ'
        # (z'_a − z'_b = (a_k/‖a_k‖ − b_k/‖b_k‖)/σ'); simdex_z stays the stored z
        d = len(kept)
        K, inv_std, W, M = _int_list(kept + 1), _float_list(1.0 / s.std), _float_list(omega), _float_list(s.mean)
        _, unit_map = s.space_of(None)
        inv_std_p = inv_std if unit_map is None else _float_list(1.0 / unit_map.unit_std)

        def scale(v: str, kept_only: bool = False) -> str:
            if kept_only:
                return f"1.0 / greatest(sqrt(list_sum(list_transform({K}, lambda k: pow({v}[k], 2)))), 1e-30)"
            if s.pruning.row_norm == "l2":
                return f"1.0 / greatest(sqrt(list_inner_product({v}, {v})), 1e-30)"
            return "1.0"

        unit = unit_map is not None
        self.con.execute(
            f"CREATE MACRO simdex_p(a, b, tau := {self.tau!r}) AS list_transform([[{scale('a', unit)}, {scale('b', unit)}]], "
            f"lambda s: least(greatest(list_sum(list_transform(range(1, {d + 1}), lambda i: {W}[i] * "
            f"exp(-pow((a[{K}[i]] * s[1] - b[{K}[i]] * s[2]) * {inv_std_p}[i] / tau, 2)))), 0.0), 1.0))[1]")
        self.con.execute(
            f"CREATE MACRO simdex_z(a) AS list_transform([{scale('a')}], lambda s: "
            f"list_transform(range(1, {d + 1}), lambda i: (a[{K}[i]] * s - {M}[i]) * {inv_std}[i]))[1]")

    def _register_results(self, searches: Sequence[SearchSpec], exact: bool) -> None:
        self.has_results = bool(searches)
        if not searches:
            return
        from simdex.engine.searcher import SearchError

        parts = []
        for n, spec in enumerate(searches, start=1):
            try:
                t = self.searcher.search(ids=list(spec.ids), k=spec.k, tau=self.tau, exact=exact, columns=[])
            except SearchError as exc:
                raise SqlError(f"search {spec.label!r}: {exc}") from None
            parts.append(pa.table({
                "search": pa.array(np.full(t.num_rows, n), pa.int32()),
                "query": pa.array([spec.label] * t.num_rows, pa.string()),
                "rank": t.column("rank").cast(pa.int32()), "object_id": t.column("object_id"),
                "score": t.column("score").cast(pa.float32())}, schema=RESULTS_SCHEMA))
        self.con.register("_results", pa.concat_tables(parts))
        self._view("results", "SELECT * FROM _results",
                   "search, query, rank, object_id, score (P): the answers to --search")

    def _lock(self) -> None:
        try:
            self.con.execute(f"SET memory_limit = '{self.memory_limit}'")
        except self._duckdb.Error as exc:
            raise SqlError(f"bad memory limit {self.memory_limit!r}: {str(exc).splitlines()[0]}") from None
        for statement in ("SET python_enable_replacements = false",  # no scans of Python variables
                          "SET autoinstall_known_extensions = false",
                          "SET autoload_known_extensions = false",
                          "SET enable_progress_bar = false",  # the CLI prints, not DuckDB
                          "SET temp_directory = ''",  # never spill to disk
                          "SET enable_external_access = false",  # no files, extensions or network
                          "SET lock_configuration = true"):  # and no SET/RESET/PRAGMA to undo it
            self.con.execute(statement)

    # ------------------------------------------------------------------ bounded execution

    def _deadline(self) -> float | None:
        return None if self.timeout_s is None else time.monotonic() + self.timeout_s

    def _bounded(self, work: Callable[[], object], deadline: float | None):
        """Run `work` (a DuckDB call) in a worker thread and wait for it until `deadline`.

        Why a thread: DuckDB holds the calling thread inside C++ for the whole statement, so a
        signal handler (Ctrl-C, SIGTERM turned into KeyboardInterrupt) cannot run there; the
        waiting thread stays interruptible and stops the statement with `interrupt()`."""
        box: dict = {}
        done = threading.Event()

        def run():
            try:
                box["value"] = work()
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="simdex-sql", daemon=True).start()
        try:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not done.wait(remaining):
                self.con.interrupt()
                done.wait(INTERRUPT_GRACE_S)
                raise SqlTimeout(f"the statement ran past the time limit of {self.timeout_s:g} s and was stopped; "
                                 f"give it more with --timeout SECONDS (0: no limit)")
        except KeyboardInterrupt:
            self.con.interrupt()
            done.wait(INTERRUPT_GRACE_S)
            raise
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, self._duckdb.Error):
                raise SqlError(self._explain(exc)) from None
            raise exc
        return box.get("value")

    # ------------------------------------------------------------------ queries

    def execute(self, sql: str, batch_rows: int = 65536) -> pa.RecordBatchReader | None:
        """Run `sql` (one or more statements); a reader over the last statement's rows, or None
        when it returns none (e.g. CREATE TABLE in the session's memory).

        Raises:
            SqlError: a SQL error or a refused operation, with DuckDB's message and a hint.
            SqlTimeout: the statement ran past the time limit (it was stopped).
        """
        return self._execute(sql, batch_rows, self._deadline())

    def _execute(self, sql: str, batch_rows: int, deadline: float | None) -> pa.RecordBatchReader | None:
        def run():
            rel = self.con.sql(sql)
            return None if rel is None else rel.to_arrow_reader(batch_rows)

        return self._bounded(run, deadline)

    def query(self, sql: str) -> pa.Table:
        """Run `sql` and return all its rows (empty table when it returns none)."""
        result = self.batches(sql)
        if result is None:
            return pa.table({})
        schema, batches = result
        return pa.Table.from_batches(list(batches), schema=schema)

    def batches(self, sql: str, batch_rows: int = 65536) -> tuple[pa.Schema, Iterator[pa.RecordBatch]] | None:
        """(schema, batches) of `sql`'s result, streamed; None when it returns none. Each batch is
        read under the statement's time limit; errors raised while streaming become SqlError too."""
        deadline = self._deadline()
        reader = self._execute(sql, batch_rows, deadline)
        if reader is None:
            return None

        def next_batch():
            try:
                return reader.read_next_batch()
            except StopIteration:
                return None

        def gen():
            while (batch := self._bounded(next_batch, deadline)) is not None:
                yield batch

        return reader.schema, gen()

    def object_ids_where(self, where: str) -> np.ndarray:
        """Ids of the live objects whose row in `objects` satisfies `where`: exactly one SQL
        expression (a set operation, a second statement or a list of expressions is refused),
        run in this locked session under its limits.

        Raises:
            SqlError: a predicate that does not parse as one expression, or fails.
        """
        duckdb = self._duckdb
        try:
            predicate = duckdb.SQLExpression(where)
        except (duckdb.Error, ValueError, TypeError) as exc:
            raise SqlError(f"not one SQL predicate: {str(exc).splitlines()[0]}") from None

        def run():
            return self.con.table("objects").filter(predicate).project("object_id").fetchnumpy()

        result = self._bounded(run, self._deadline())
        return np.asarray(result["object_id"], dtype=np.int64)

    def _explain(self, exc: Exception) -> str:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        rest = "\n".join(text.splitlines()[1:]).strip()
        hint = ""
        if isinstance(exc, self._duckdb.PermissionException) or "disabled by configuration" in text:
            hint = ("refused: simdex sql reads only the catalog, through its views, and writes nothing "
                    "(COPY, ATTACH, EXPORT, read_csv/read_parquet of files, INSTALL/LOAD are off); "
                    "save a result with --format csv|json|parquet --output FILE")
        elif "the configuration has been locked" in text:
            hint = "refused: simdex sql's settings are locked so that it can neither write nor read outside the catalog"
        elif re.search(r"Table with name results does not exist", text) and not self.has_results:
            hint = _NO_RESULTS_HINT
        elif any(re.search(rf"Table with name {v} does not exist", text) for v in BUILD_VIEWS) or (
                "simdex_" in text and self.searcher is None):
            hint = f"the build views and macros need a build: run `simdex build --catalog {self.catalog.root}`"
        elif re.search(r"(Table|Function|Macro) with name \w+ does not exist", text):
            hint = "views: " + ", ".join(self.views) + (", macros: simdex_p(a, b), simdex_z(a)" if self.searcher else "")
        parts = [first] + ([rest] if rest and "LINE" in rest else []) + ([hint] if hint else [])
        return "\n".join(parts)

    def describe(self) -> pa.Table:
        """The views of this session with their columns and what they hold."""
        rows = []
        for name, what in self.views.items():
            cols = self.con.sql(f"DESCRIBE {name}").fetchall()
            rows.append({"view": name, "columns": ", ".join(f"{c[0]} {c[1]}" for c in cols), "holds": what})
        return pa.Table.from_pylist(rows)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> SqlSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
