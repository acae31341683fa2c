"""The root of simdex's exceptions: every error the library raises for a user's mistake or a
broken input is a `SimdexError` (re-exported as `simdex.SimdexError`), with a message that says
what to change. The CLI turns them into one-line messages; a program can catch the one class."""


class SimdexError(Exception):
    """Base class of every simdex error (catalog, build, search, SQL, model, source, …)."""


class MissingDependencyError(SimdexError, ImportError):
    """An optional package a call needs is not installed; the message names the pip extra."""


MAX_OBJECT_ID = 2**63 - 1


def as_object_ids(values, error: type[SimdexError] = SimdexError):
    """Object ids as int64 (n,); `error` (one line) for a value that is no id, e.g. beyond int64.

    Example:
        >>> as_object_ids([3, 5]).tolist()
        [3, 5]
    """
    import numpy as np

    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except (OverflowError, ValueError, TypeError):
        bad = next((v for v in np.asarray(values, dtype=object).reshape(-1)
                    if not (isinstance(v, int | np.integer) and 0 <= v <= MAX_OBJECT_ID)), values)
        raise error(f"{bad!r} is not an object id (ids are whole numbers from 0 to {MAX_OBJECT_ID})") from None
