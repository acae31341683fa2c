"""The root of simdex's exceptions: every error the library raises for a user's mistake or a
broken input is a `SimdexError` (re-exported as `simdex.SimdexError`), with a message that says
what to change. The CLI turns them into one-line messages; a program can catch the one class."""


class SimdexError(Exception):
    """Base class of every simdex error (catalog, build, search, SQL, model, source, …)."""


class MissingDependencyError(SimdexError, ImportError):
    """An optional package a call needs is not installed; the message names the pip extra."""
