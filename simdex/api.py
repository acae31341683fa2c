"""The Python API: `simdex.open`, `simdex.index`, `simdex.build` and the lazy `Query`.

In the shape of LanceDB and FAISS: open a catalog, start a search, refine it, then read it
in the form you want; nothing runs until a terminal method (`to_arrow`, `to_pandas`,
`to_polars`, `to_list`) is called, and each call runs the search again::

    db = simdex.open("cat/")
    db.search(ids=[42]).where("label = 'Sandal'").limit(5).to_list()

Everything here calls the same library functions as the CLI (`Searcher.search`,
`index_source`, `engine.build.build`), so the Python and command-line answers are the same.
Importing this module is cheap: numpy, pyarrow and the engine are loaded by `open`, torch
only by a search by image and by `index`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from simdex.engine.errors import MissingDependencyError, SimdexError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from simdex.engine.build import BuildResult
    from simdex.engine.searcher import Searcher
    from simdex.indexer.runner import IndexResult


def open(path: str | os.PathLike) -> Database:  # noqa: A001 (the name users know from lancedb/duckdb)
    """Open the catalog at `path` and its current build, ready to search.

    Raises:
        CatalogError: no catalog there. SearchError: it has no build yet (`simdex.build`).

    Example:
        >>> db = simdex.open("cat/")                       # doctest: +SKIP
        >>> db.search(ids=[42]).limit(3).to_list()[0]["score"]   # doctest: +SKIP
        1.0
    """
    from simdex.engine.searcher import Searcher

    return Database(Searcher.open(path))


def index(source: str | os.PathLike, catalog: str | os.PathLike, model: str | os.PathLike | None = None,
          **options: Any) -> IndexResult:
    """Index every image of `source` (a folder, a .csv/.parquet list, an IDX file, 'fashion-mnist')
    into the catalog folder `catalog` (created if needed), with `model` (default: the shipped one).

    `options` are those of `simdex index`: objects ('largest' | 'all'), min_area, region
    ('bbox' | 'mask' | 'full' | 'grid2' | 'grid4'), batch_size, workers, shard_images, limit.
    A rerun resumes an interrupted job and indexes nothing twice. Runs the model (imports torch).

    Raises:
        SourceError, ModelFileError, CatalogError; SimdexError for an unknown or bad option.
    """
    from dataclasses import fields

    from simdex.indexer.runner import IndexOptions, index_source

    known = {f.name for f in fields(IndexOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SimdexError(f"unknown index option {', '.join(unknown)}; options are {', '.join(sorted(known))}")
    opts = IndexOptions(**options)
    try:
        opts.check()
    except ValueError as exc:
        raise SimdexError(str(exc)) from None
    return index_source(source, catalog, model, opts)


def build(catalog: str | os.PathLike, **config: Any) -> BuildResult:
    """Build and publish a new version of the catalog's search structures (pruning, z-scores, Ω,
    candidate index), as `simdex build` does.

    `config` are the fields of `engine.build.BuildConfig`: retain (1.0), omega ('auto', 'uniform',
    'svd', 'clusters', 'welch', 'learned'), clusters_from, n_clusters, omega_split, tau ('auto' or None:
    chosen with learned Ω where there are labels, else 1; or a number), index ('auto',
    'exact', 'ivf'), recall_queries, batch_rows, seed, learned_rows, keep_builds, index_options.

    Raises:
        CatalogError: no catalog. BuildError: empty catalog, bad option.
    """
    from dataclasses import fields

    from simdex.engine.build import BuildConfig, BuildError
    from simdex.engine.build import build as build_catalog
    from simdex.engine.catalog import Catalog

    known = {f.name for f in fields(BuildConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise BuildError(f"unknown build option {', '.join(unknown)}; options are {', '.join(sorted(known))}")
    return build_catalog(Catalog.open(catalog), BuildConfig(**config))


class Database:
    """An open catalog's current build (what `simdex.open` returns)."""

    def __init__(self, searcher: Searcher):
        self._searcher = searcher

    @property
    def searcher(self) -> Searcher:
        """The engine's Searcher underneath (arrays, metadata, Ω)."""
        return self._searcher

    @property
    def version(self) -> str:
        return self._searcher.version

    def __len__(self) -> int:
        return len(self._searcher.object_ids)

    def __repr__(self) -> str:
        return f"simdex.Database({str(self._searcher.catalog.root)!r}, build={self.version!r}, objects={len(self)})"

    def search(self, ids=None, *, image: str | os.PathLike | list | None = None, box: tuple | None = None,
               features: np.ndarray | None = None) -> Query:
        """Start a search by stored object id(s), by image file(s) (with an optional `box`
        x0, y0, x1, y1 on one image), or by raw feature vectors (m, N). Several ids, images or
        vectors form one set (trapezoid membership by default). Returns a lazy `Query`."""
        given = [name for name, v in (("ids", ids), ("image", image), ("features", features)) if v is not None]
        if len(given) != 1:
            raise SimdexError(f"search takes exactly one of ids=, image=, features= (got {', '.join(given) or 'none'})")
        if box is not None and image is None:
            raise SimdexError("box= selects a region of an image: give image= too")
        if ids is not None:
            ids = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        images = None if image is None else ([image] if isinstance(image, str | os.PathLike) else list(image))
        if box is not None and len(images) != 1:
            raise SimdexError("box= selects a region of one image")
        return Query(self, ids=ids, images=images, box=box, features=features)

    def features(self, ids) -> np.ndarray:
        """Raw feature vectors (len(ids), N) float32 of stored objects (what `search(features=…)` takes)."""
        from simdex.engine.searcher import SearchError

        ids = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        try:
            return self._searcher.catalog.shards().features_of(ids)
        except KeyError as exc:
            raise SearchError(f"{exc.args[0]} of catalog {self._searcher.catalog.root}") from None

    def sql(self, statement: str) -> pa.Table:
        """Run one read-only SQL statement over the catalog's views (`simdex sql --views`)."""
        from simdex.engine.sql import SqlSession

        with SqlSession(self._searcher.catalog) as session:
            return session.query(statement)


class Query:
    """A search not yet run: refine it with `where`, `limit`, `membership`, `omega`, `exact`,
    `explain`, then read it with `to_arrow`, `to_pandas`, `to_polars` or `to_list`. Each
    refinement returns a new Query, so a base query can be reused."""

    def __init__(self, db: Database, ids=None, images=None, box=None, features=None, **options: Any):
        self._db = db
        self._ids, self._images, self._box, self._features = ids, images, box, features
        self._options = {"k": 10, **options}

    def _with(self, **changes: Any) -> Query:
        q = Query(self._db, self._ids, self._images, self._box, self._features, **self._options)
        q._options.update(changes)
        return q

    def where(self, predicate: str) -> Query:
        """Only objects whose metadata satisfy this SQL predicate, e.g. "label = 'Sandal'"."""
        return self._with(where=predicate)

    def limit(self, k: int) -> Query:
        """At most k results (default 10)."""
        if int(k) < 1:
            raise SimdexError(f"limit must be ≥ 1, got {k}")
        return self._with(k=int(k))

    def membership(self, name: str, tau: float | None = None) -> Query:
        """gaussian (eq. 2, one query), trapezoid (eq. 3), triangle or max (sets); τ in standard deviations."""
        return self._with(membership=name, tau=tau)

    def omega(self, name: str) -> Query:
        """Score with another Ω the build stored: uniform, svd, clusters, welch."""
        return self._with(omega=name)

    def exact(self, exact: bool = True) -> Query:
        """Scan the whole catalog instead of the candidate index."""
        return self._with(exact=bool(exact))

    def explain(self, explain: bool = True) -> Query:
        """Add a `layers` column: each P split into the parts the layers of φ give."""
        return self._with(explain=bool(explain))

    def nprobe(self, nprobe: int) -> Query:
        """IVF lists visited by the candidate stage (this query only)."""
        return self._with(nprobe=int(nprobe))

    def __repr__(self) -> str:
        what = (f"ids={self._ids}" if self._ids is not None else f"image={self._images}" if self._images is not None
                else f"features={getattr(self._features, 'shape', '?')}")
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options.items() if v is not None)
        return f"simdex.Query({what}, {opts})"

    # ------------------------------------------------------------------ terminal methods

    def to_arrow(self) -> pa.Table:
        """Run the search: a pyarrow Table with rank, object_id, score (P ∈ [0, 1]) and the objects'
        metadata, best first."""
        searcher = self._db.searcher
        features = self._features
        if self._images is not None:
            features = _image_features(searcher, self._images, self._box)
        return searcher.search(ids=self._ids, features=features, **self._options)

    def to_list(self) -> list[dict]:
        """The results as a list of dicts, best first."""
        return self.to_arrow().to_pylist()

    def to_pandas(self):
        """The results as a pandas DataFrame (needs pandas: pip install 'simdex[pandas]')."""
        table = self.to_arrow()
        _require("pandas", "to_pandas")
        return table.to_pandas()

    def to_polars(self):
        """The results as a polars DataFrame (needs polars: pip install 'simdex[polars]')."""
        table = self.to_arrow()
        polars = _require("polars", "to_polars")
        return polars.from_arrow(table)


def _image_features(searcher: Searcher, images: list, box) -> np.ndarray:
    from simdex.indexer.query_features import image_features

    return image_features(searcher.catalog, images, boxes=None if box is None else [tuple(box)])


def _require(module: str, method: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"Query.{method}() needs {module}, which is not installed: "
                                     f"pip install 'simdex[{module}]' (or use to_arrow() / to_list())") from None


__all__ = ["Database", "Query", "build", "index", "open"]
