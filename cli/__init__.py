"""simdex.cli: the `simdex` command. Parses, calls the library, prints; no algorithm lives here."""

# The folder sits at the repository's top level and installs as simdex.cli (setuptools package-dir).
# Imported under its bare folder name (from a checkout's root) it would be a second, separate copy of
# every module; refuse that with a message instead.
if __name__ != "simdex.cli":
    raise ImportError(f"import simdex.cli, not {__name__!r}: the package is installed as simdex (pip install -e .)")
