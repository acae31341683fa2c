"""simdex: an embedded vector database for images with a probabilistic similarity P for every answer.

    >>> import simdex                                                   # doctest: +SKIP
    >>> db = simdex.open("cat/")                                        # doctest: +SKIP
    >>> db.search(ids=[42]).where("label = 'Sandal'").limit(5).to_pandas()   # doctest: +SKIP

`open`, `index`, `build` and the lazy `Query` are in `simdex.api`; every error the library raises
is a `SimdexError`. The package has three floors, imported one way: ``simdex.cli`` → the
application modules in ``simdex`` (demo, report, evaluation, sheets) → ``simdex.indexer``
(torch: model, training, extraction) → ``simdex.engine`` (catalog, build, search, SQL; no torch).
``import simdex`` loads none of them: numpy, pyarrow and the engine come with `open`, torch
only with a search by image or `index`.
"""

__version__ = "0.2.0"

from simdex.api import Database, Query, build, index, open  # noqa: E402, A004
from simdex.engine.errors import MissingDependencyError, SimdexError  # noqa: E402

# The library's specific errors, importable from the top (loaded on first use: they live with their modules).
_ERRORS = {
    "CatalogError": "simdex.engine.catalog", "BuildError": "simdex.engine.build",
    "SearchError": "simdex.engine.searcher", "SqlError": "simdex.engine.sql",
    "MembershipError": "simdex.engine.membership", "OmegaError": "simdex.engine.omega",
    "SourceError": "simdex.indexer.sources", "ModelFileError": "simdex.indexer.checkpoint",
    "QueryImageError": "simdex.indexer.query_features",
}


def __getattr__(name: str):
    if name in _ERRORS:
        import importlib

        return getattr(importlib.import_module(_ERRORS[name]), name)
    raise AttributeError(f"module 'simdex' has no attribute {name!r}")


__all__ = ["Database", "MissingDependencyError", "Query", "SimdexError", "__version__", "build", "index", "open",
           *_ERRORS]
