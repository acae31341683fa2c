"""Sizes and checksums of the files a catalog commits, and the checks that trust them.

Every file is recorded when it is committed (a shard and its errors file in the job's journal,
a build's files in its `manifest.json`): its size in bytes and its SHA-256. Readers check what
is cheap on every open (the size, and the checksum of small files); `simdex check` checks
every checksum. A file that fails is a `DamagedFileError` naming it and saying how to recover,
never a wrong answer.

JSON files that are edited in place (catalog.json, the journals) carry their own checksum: a
`checksum` key with the SHA-256 of the canonical JSON of everything else (`seal` / `unseal`).

Example:
    >>> record = file_record(Path("shards/000001.parquet"))     # doctest: +SKIP
    >>> record
    {'bytes': 1048576, 'sha256': '9f86d0…'}
    >>> check_file(Path("shards/000001.parquet"), record, full=True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from simdex.engine.errors import SimdexError

CHUNK_BYTES = 1 << 20
SMALL_FILE_BYTES = 4 << 20  # files up to this size are hashed on every open (≈2 ms)
CHECKSUM_KEY = "checksum"


class CatalogError(SimdexError):
    """A catalog that is missing, not a catalog, of another format, damaged or used inconsistently."""


class DamagedFileError(CatalogError):
    """A file of a catalog that is missing, truncated, garbled or edited; `path` names it."""

    def __init__(self, path: str | os.PathLike, problem: str, recovery: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.recovery = recovery
        super().__init__(f"{path} is damaged: {problem}" + (f"; {recovery}" if recovery else ""))


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """{bytes, sha256} of a file, as committed."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def check_file(path: str | os.PathLike, record: dict | None, full: bool, recovery: str = "",
               hash_small: bool = True) -> None:
    """Raise DamagedFileError unless `path` matches its `record`: its size always, its checksum
    when `full` or when the file is small (and `hash_small`). A missing record (a file committed
    by an older simdex) checks only that the file exists."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DamagedFileError(path, "the file is missing", recovery) from None
    except OSError as exc:
        raise DamagedFileError(path, f"unreadable ({exc.strerror})", recovery) from None
    if not record:
        return
    if size != record.get("bytes"):
        raise DamagedFileError(path, f"{size} bytes, {record.get('bytes')} were committed (truncated or overwritten)",
                               recovery)
    if full or (hash_small and size <= SMALL_FILE_BYTES):
        try:
            digest = sha256_of(path)
        except OSError as exc:
            raise DamagedFileError(path, f"unreadable ({exc.strerror})", recovery) from None
        if digest != record.get("sha256"):
            raise DamagedFileError(path, "its SHA-256 differs from the one committed (garbled bytes)", recovery)


def _canonical(obj: dict) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if k != CHECKSUM_KEY}, sort_keys=True,
                      separators=(",", ":")).encode()


def seal(obj: dict) -> dict:
    """`obj` with a `checksum` key over the rest of it (to write as JSON)."""
    return {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY},
            CHECKSUM_KEY: hashlib.sha256(_canonical(obj)).hexdigest()}


def unseal(obj: object, path: str | os.PathLike, recovery: str = "") -> dict:
    """`obj` read from `path`, checked against its `checksum` key (absent: written by an older
    simdex, accepted). Raise DamagedFileError when it is not a JSON object or was edited."""
    if not isinstance(obj, dict):
        raise DamagedFileError(path, "not a JSON object", recovery)
    stored = obj.get(CHECKSUM_KEY)
    if stored is not None and stored != hashlib.sha256(_canonical(obj)).hexdigest():
        raise DamagedFileError(path, "its content differs from its checksum (edited or garbled)", recovery)
    return obj
