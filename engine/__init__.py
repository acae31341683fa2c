"""simdex.engine: owns the catalog and its builds, answers queries. Never imports torch or simdex.indexer."""

# The folder sits at the repository's top level and installs as simdex.engine (setuptools package-dir).
# Imported under its bare folder name (from a checkout's root) it would be a second, separate copy of
# every module; refuse that with a message instead.
if __name__ != "simdex.engine":
    raise ImportError(f"import simdex.engine, not {__name__!r}: the package is installed as simdex (pip install -e .)")
