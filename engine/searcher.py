"""Search a catalog's current build: queries by object id or by raw feature vectors.

`Searcher.open(root)` loads the build that is current at that moment (its matrix is
memory-mapped; a later build does not disturb it) and the catalog's tombstones.
Nothing here imports torch; DuckDB is imported only for a `where` filter (in engine.sql's sandbox).

Example:
    >>> s = Searcher.open("cat/")                                  # doctest: +SKIP
    >>> s.search(ids=[42], k=10).to_pylist()[0]["score"]            # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simdex.engine.build_files import COLUMN_OMEGA_PREFIX, BuildFiles, label_column_omegas
from simdex.engine.candidates import load_candidate_index
from simdex.engine.catalog import Catalog
from simdex.engine.errors import SimdexError, as_object_ids
from simdex.engine.explain import layer_of_features
from simdex.engine.fastscan import FastScanner
from simdex.engine.membership import MembershipError, make_membership
from simdex.engine.omega import OmegaInputs, make_omega
from simdex.engine.quantized import LutScanner
from simdex.engine.search import search

log = logging.getLogger(__name__)

# above this many objects an exhaustive query scans the 8-bit codes (then rescores in float32)
QUANTIZED_SCAN_ABOVE = 200_000
RESULT_COLUMNS = ("rank", "object_id", "score")


class SearchError(SimdexError):
    """A query that cannot be answered as asked; the message says how to fix it."""


@dataclass
class Query:
    z: np.ndarray  # (m, d) normalised query vectors
    object_ids: list[int]  # query object ids (empty for vectors)

    def mapped(self, row_map) -> Query:
        """This query in the space of an Ω (`Searcher.space_of`'s row map; itself for None)."""
        return self if row_map is None else Query(row_map.apply(self.z), self.object_ids)


def load_scanner(files: BuildFiles, threads: int) -> FastScanner | LutScanner:
    """The exhaustive scan's first pass: the build's 4-bit fast-scan chunks, or for a build
    made before them the 8-bit table scan (one shard per thread, at most 4: each holds its own
    118 MB identity codebook)."""
    fast = files.read_fastscan()
    if fast is not None:
        codec4, chunks = fast
        return FastScanner(chunks, codec4, threads=threads)
    return LutScanner(files.codes(), threads=threads)


class Searcher:
    """The current build of a catalog, ready to answer queries."""

    def __init__(self, catalog: Catalog, build: BuildFiles | str | os.PathLike):
        self.catalog = catalog
        self.files = build if isinstance(build, BuildFiles) else BuildFiles(build)
        self.build_dir = self.files.folder
        self.version = self.files.version
        try:
            self.info = self.files.read_info()
            self.pruning = self.files.read_pruning()
            self.kept, self.mean, self.std = self.pruning.kept, self.pruning.mean, self.pruning.std
            self.v1 = self.pruning.v1_kept  # loadings of the kept features on v_1 (the svd Ω)
            self.codec = self.files.read_codec()
            self.omega = self.files.read_omega()
            self.Z = self.files.z()
            self.object_ids = self.files.object_ids()
        except (OSError, ValueError, KeyError) as exc:
            raise SearchError(f"build {self.build_dir} is incomplete or unreadable ({exc}); run `simdex build` again") from None
        self._index = None
        self._scanner = None
        self._omegas: dict[str, np.ndarray] | None = None
        self._l2: tuple | None = None  # (UnitLengthMap, mapped matrix), loaded by the first query that needs them
        self.layer_of_kept = layer_of_features(self.kept, catalog.phi)  # index into φ of each kept feature
        self.deleted = catalog.deleted_ids()
        self.allowed = np.ones(len(self.object_ids), bool)
        if len(self.deleted):
            self.allowed &= ~np.isin(self.object_ids, self.deleted)
        self.all_allowed = bool(self.allowed.all())

    @classmethod
    def open(cls, root: str | os.PathLike) -> Searcher:
        """Open the current build of the catalog at `root`.

        Raises:
            CatalogError: not a catalog.
            SearchError: the catalog has no build yet.
        """
        catalog = Catalog.open(root)
        build = catalog.current_build()
        if build is None:
            raise SearchError(f"catalog {root} has no build yet; run `simdex build --catalog {root}` first")
        return cls(catalog, build)

    # ------------------------------------------------------------------ parts loaded on demand

    @property
    def index(self):
        if self._index is None:
            self._index = load_candidate_index(self.files)
        return self._index

    @property
    def scanner(self) -> FastScanner | LutScanner | None:
        if self._scanner is None and len(self.object_ids) > QUANTIZED_SCAN_ABOVE:
            self._scanner = load_scanner(self.files, threads=min(4, os.cpu_count() or 1))
        return self._scanner

    @property
    def omegas(self) -> dict[str, np.ndarray]:
        """Ω by estimator name: the build's own, uniform and svd (derived from the build), and the
        class-based ones the build stored (`omegas.npz`: clusters, and welch from real labels)."""
        if self._omegas is None:
            inputs = OmegaInputs(dim=len(self.kept), v1=self.v1)
            omegas = {name: make_omega(name).estimate(inputs).astype(np.float32) for name in ("uniform", "svd")}
            omegas.update(self.files.read_other_omegas())
            omegas[self.info["omega"]["estimator"]] = self.omega
            self._omegas = omegas
        return self._omegas

    def estimator_names(self) -> list[str]:
        """The Ω this build offers by estimator name (its label columns' Ω are named by column)."""
        return sorted(k for k in self.omegas if not k.startswith(COLUMN_OMEGA_PREFIX))

    def omega_columns(self) -> dict[str, str]:
        """Label columns with an Ω of their own → the name it is stored under (`label_column_omegas`)."""
        return label_column_omegas(self.info["omega"])

    def omega_named(self, name: str | None) -> np.ndarray:
        """The build's Ω (None), another one it stored by estimator name, or the Ω of a label column
        (`simdex query --omega instance`); SearchError names the ones there are."""
        if name is None or name == self.info["omega"]["estimator"]:
            return self.omega
        if name not in self.omegas:
            key = self.omega_columns().get(name.removeprefix(COLUMN_OMEGA_PREFIX))
            if key is not None:
                return self.omega_named(key)
            columns = sorted(self.omega_columns())
            raise SearchError(f"this build has no {name!r} Ω; it has {', '.join(self.estimator_names())}"
                              + (f" and one per label column: {', '.join(columns)}" if columns else "")
                              + " (clusters needs classes or `simdex build --omega clusters`, welch a label column; "
                                "builds made before simdex stored them need `simdex build` again)")
        return self.omegas[name]

    def row_map_of(self, name: str | None) -> str:
        """The space the Ω `name` (as `omega_named` takes it) is measured in: ``none`` (the stored z)
        or ``l2`` (unit-length rows, `engine.row_map`), as the build chose for the build's Ω and each
        label column's; every other estimator is on the stored z."""
        record = self.info["omega"]
        key = None if name is None else name if name in self.omegas else \
            self.omega_columns().get(name.removeprefix(COLUMN_OMEGA_PREFIX), "")
        if key is None or key == record["estimator"]:
            return record.get("row_map", "none")
        if not key.startswith(COLUMN_OMEGA_PREFIX):  # another estimator (or no such Ω: omega_named says so)
            return "none"
        return (record.get("columns", {}).get(key.removeprefix(COLUMN_OMEGA_PREFIX)) or {}).get("row_map", "none")

    def space_of(self, name: str | None):
        """(the matrix the Ω `name` scores, the row map a query's stored z goes through first or None)."""
        if self.row_map_of(name) == "none":
            return self.Z, None
        if self._l2 is None:
            try:
                row_map = self.files.read_l2_map(self.pruning)
                if row_map is None:
                    raise OSError("its l2 row map is missing")
                self._l2 = (row_map, self.files.z_l2())
            except (OSError, ValueError, KeyError) as exc:
                raise SearchError(f"build {self.build_dir} is incomplete or unreadable ({exc}); "
                                  f"run `simdex build` again") from None
        return self._l2[1], self._l2[0]

    @property
    def tau(self) -> float:
        return float(self.info["config"]["tau"])

    # ------------------------------------------------------------------ queries

    def rows_of(self, object_ids) -> np.ndarray:
        """Rows of the build matrix for object ids; SearchError for ids the build does not hold."""
        ids = as_object_ids(object_ids, SearchError)
        pos = np.searchsorted(self.object_ids, ids)
        ok = (pos < len(self.object_ids)) & (self.object_ids[np.minimum(pos, len(self.object_ids) - 1)] == ids)
        if not ok.all():
            missing = ", ".join(map(str, ids[~ok][:5]))
            newest = int(self.object_ids[-1]) if len(self.object_ids) else -1
            raise SearchError(f"no object {missing} in build {self.version} (ids 0…{newest}); objects indexed "
                              f"after the build become searchable with the next `simdex build`")
        return pos

    def query_from_ids(self, object_ids) -> Query:
        rows = self.rows_of(object_ids)
        return Query(np.asarray(self.Z[np.sort(rows)], dtype=np.float32), [int(i) for i in object_ids])

    def query_from_features(self, features: np.ndarray) -> Query:
        """Raw feature vectors (m, N) of new objects (e.g. from the model) → a query."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if x.shape[1] != self.catalog.num_features:
            raise SearchError(f"feature vectors have {x.shape[1]} values, the catalog's model gives {self.catalog.num_features}")
        return Query(self.pruning.normalise(x), [])

    def allow_mask(self, where: str | None = None) -> np.ndarray | None:
        """Rows that may be returned: not deleted, and matching the SQL predicate `where` on the objects'
        metadata; None when that is every row (at 10M rows, copying and counting a full mask cost a
        query more than its candidate stage)."""
        if not where:
            return None if self.all_allowed else self.allowed.copy()
        return self.allowed & np.isin(self.object_ids, self.filter_ids(where))

    def filter_ids(self, where: str) -> np.ndarray:
        """Object ids whose metadata satisfy the SQL predicate `where`, run in the locked, read-only
        session of `simdex sql` (engine.sql: no file access, one expression, time and memory limits)."""
        from simdex.engine.sql import SqlError, SqlSession

        try:
            with SqlSession(self.catalog, searcher=self) as session:
                return session.object_ids_where(where)
        except SqlError as exc:
            columns = ", ".join(self.catalog.shards().columns)
            raise SearchError(f"bad --where predicate {where!r}: {str(exc).splitlines()[0]}; columns are {columns}") from None

    def search(
        self,
        ids=None,
        features: np.ndarray | None = None,
        k: int = 10,
        tau: float | None = None,
        membership: str = "auto",
        where: str | None = None,
        exact: bool = False,
        n_candidates: int | None = None,
        nprobe: int | None = None,
        columns: list[str] | None = None,
        omega: str | None = None,
        explain: bool = False,
    ) -> pa.Table:
        """The k objects most similar to the query, best first.

        The query is one object id or raw feature vector (Gaussian membership by
        default) or several of them taken as one set (trapezoid by default, or `max`).

        The score uses the build's Ω, or the stored estimator `omega` names (`omegas`);
        the candidate stage stays weighted by the build's Ω, so with another Ω `exact=True`
        (or more candidates) is the safe choice. An Ω the build measured on l2 rows
        (`row_map_of`) is scored on its own matrix by an exact scan (such builds have the exact
        candidate index anyway).

        Returns:
            a table with rank, object_id, score (P ∈ [0, 1]) and the objects' metadata
            (label, source, …, or `columns`; none for `columns=[]`); fewer than k rows when fewer
            objects are allowed.
            With `explain`, a struct column `layers`: for each layer of φ that has kept
            features, its part of P (the parts add up to P; `engine.explain`).

        Raises:
            SearchError: no query, unknown id, bad option or bad `where`.
        """
        if (ids is None or len(ids) == 0) == (features is None):
            raise SearchError("give object ids or feature vectors (not both)")
        if k < 1:
            raise SearchError(f"k must be ≥ 1, got {k}")
        weights = self.omega_named(omega)
        Z, row_map = self.space_of(omega)
        query = self.query_from_ids(ids) if features is None else self.query_from_features(features)
        m = self.membership_of(query.mapped(row_map), membership, tau)
        allow = self.allow_mask(where)
        index = None if exact or row_map is not None else self.index
        if index is not None and nprobe is not None:
            index = index.with_nprobe(nprobe)  # a copy: the cached index keeps its own nprobe
        options = {} if n_candidates is None else {"n_candidates": n_candidates}
        scanner = self.scanner if row_map is None and (exact or index is None or index.kind == "exact") else None
        P, rows = search(Z, [m], weights, k, index=index, allow=allow, exact=exact,
                         scanner=scanner, codec=self.codec if scanner is not None else None, **options)
        return self._result_table(P[0], rows[0], (m, Z) if explain else None, weights, columns)

    def membership_of(self, query: Query, membership: str = "auto", tau: float | None = None):
        """The fuzzy set of a query: Gaussian for one vector, trapezoid for several (`auto`), or the named one."""
        if membership == "auto":
            membership = "gaussian" if len(query.z) == 1 else "trapezoid"
        try:
            return make_membership(membership, query.z, self.tau if tau is None else tau)
        except MembershipError as exc:
            raise SearchError(str(exc)) from None

    def _result_table(self, P: np.ndarray, rows: np.ndarray, explain_membership, weights: np.ndarray,
                      columns: list[str] | None) -> pa.Table:
        """rank, object_id, score (+ layers when explaining) and the metadata of one query's hits."""
        keep = rows >= 0
        result_ids = np.asarray(self.object_ids[rows[keep]], dtype=np.int64)
        table = pa.table({"rank": pa.array(np.arange(1, keep.sum() + 1), pa.int32()),
                          "object_id": pa.array(result_ids, pa.int64()),
                          "score": pa.array(P[keep], pa.float32())})
        if explain_membership is not None:
            table = table.append_column("layers", self._explain(*explain_membership, rows[keep], weights))
        meta = self.metadata(result_ids, columns) if columns != [] else pa.table({})  # [] = no metadata: no reads
        for name in meta.column_names:
            if name != "object_id":
                table = table.append_column(name, meta.column(name))
        return table

    def omega_per_layer(self, omega: str | None = None) -> dict[str, float]:
        """Σ ω over each layer's kept features (layers with kept features only): the most a layer can
        give to P, so that a layer's part of P divided by it says how well that layer matches."""
        weights = self.omega_named(omega)
        return {self.catalog.phi[i]["name"]: float(weights[self.layer_of_kept == i].sum() / weights.sum())
                for i in np.unique(self.layer_of_kept)}

    def _explain(self, membership, Z: np.ndarray, rows: np.ndarray, omega: np.ndarray) -> pa.StructArray:
        from simdex.engine.explain import layer_contributions

        parts = layer_contributions(np.asarray(Z[rows]), membership, omega / omega.sum(), self.layer_of_kept,
                                    len(self.catalog.phi))
        used = np.unique(self.layer_of_kept)
        return pa.StructArray.from_arrays([pa.array(parts[:, i], pa.float32()) for i in used],
                                          names=[self.catalog.phi[i]["name"] for i in used])

    def metadata(self, object_ids: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Metadata rows of `object_ids`, in that order (`ShardReader.take`: only the row groups that hold them)."""
        return self.catalog.shards().take(object_ids, columns)
