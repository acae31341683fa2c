"""simdex.indexer: the model, its training, image sources, extraction and shard writing."""

# The folder sits at the repository's top level and installs as simdex.indexer (setuptools package-dir).
# Imported under its bare folder name (from a checkout's root) it would be a second, separate copy of
# every module; refuse that with a message instead.
if __name__ != "simdex.indexer":
    raise ImportError(f"import simdex.indexer, not {__name__!r}: the package is installed as simdex (pip install -e .)")
