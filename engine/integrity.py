"""Sizes and checksums of the files a catalog commits, and the checks that trust them.

Every file is recorded when it is committed (a shard and its errors file in the job's journal,
a build's files in its `manifest.json`): its size in bytes and its SHA-256. Readers check what
is cheap on every open (the size, and the checksum of small files); `simdex check` checks
every checksum. A file that fails is a `DamagedFileError` naming it and saying how to recover,
never a wrong answer.

A build's large files (over SMALL_FILE_BYTES: the matrices, the FAISS index) are hashed in full
once, and the result is remembered in a `VerifiedStamps` file keyed by what the file system
changes on every write (inode, size, mtime and ctime, which no user can set back): an open whose
file still has the stamped key trusts the stamp (a `stat`, no read); any write, copy or restore
since makes the next open hash the file again. What a stamp cannot see is a change that bypasses
the file system (bit rot on the medium, a write to the raw device): `simdex check` hashes everything.

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
import logging
import os
import time
import uuid
from pathlib import Path

from simdex.engine.errors import SimdexError

CHUNK_BYTES = 1 << 20
SMALL_FILE_BYTES = 4 << 20  # files up to this size are hashed on every open (≈2 ms)
CHECKSUM_KEY = "checksum"
VERIFIED_FILE = ".verified.json"
VERIFIED_FORMAT = "simdex-verified/1"
# A write within a timestamp tick of a verification could leave mtime and ctime as they were
# (coarse clocks; FAT's 2 s): a file changed this recently is not stamped, the next open hashes it.
RACY_NS = 2_000_000_000

log = logging.getLogger(__name__)


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
    if full or (hash_small and size <= SMALL_FILE_BYTES):  # larger: VerifiedStamps
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


def stat_key(st: os.stat_result) -> list[int]:
    """What every write to a file changes: [inode, size, mtime ns, ctime ns]."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


_MEMO: dict[tuple[str, tuple[int, ...]], str] = {}  # (path, stat key) → SHA-256 verified in this process


class VerifiedStamps:
    """The large files of one folder that were hashed in full, each with the `stat_key` it had.

    Kept in `<folder>/.verified.json`, or, where the folder is not writable, in the user's
    cache (`$XDG_CACHE_HOME/simdex/verified/`); a lost or unreadable stamp file only means the
    next open hashes again. Example:

        >>> stamps = VerifiedStamps(Path("builds/v000003-…"))        # doctest: +SKIP
        >>> stamps.check(path, record, recovery)   # a stat when stamped, a full hash otherwise
        >>> stamps.save()
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files: dict[str, dict] = {}
        self.changed = False
        for path in self._paths():
            try:
                obj = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(obj, dict) and obj.get("format") == VERIFIED_FORMAT and isinstance(obj.get("files"), dict):
                self.files = {k: v for k, v in obj["files"].items() if isinstance(v, dict)}
                break

    def _paths(self) -> list[Path]:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simdex" / "verified"
        key = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:32]
        return [self.folder / VERIFIED_FILE, cache / f"{key}.json"]

    def is_verified(self, path: Path, record: dict, st: os.stat_result) -> bool:
        """True when `path` was hashed to the committed SHA-256 and has not changed since."""
        key = stat_key(st)
        if _MEMO.get((str(path), tuple(key))) == record.get("sha256"):
            return True
        stamp = self.files.get(path.name)
        return bool(stamp) and stamp.get("stat") == key and stamp.get("sha256") == record.get("sha256")

    def add(self, path: Path, sha256: str, before: os.stat_result) -> None:
        """Remember that `path` hashed to `sha256`, when it did not change while it was hashed and
        its last change is not within a timestamp tick of now."""
        after = path.stat()
        if stat_key(after) != stat_key(before) or time.time_ns() - after.st_ctime_ns < RACY_NS:
            return
        _MEMO[(str(path), tuple(stat_key(after)))] = sha256
        self.files[path.name] = {"sha256": sha256, "stat": stat_key(after)}
        self.changed = True

    def check(self, path: Path, record: dict | None, recovery: str = "") -> None:
        """`check_file(path, record, full=True)`, skipped (after the size check) when the stamp says
        the file was verified and has not changed since; a file that passes is stamped."""
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is not None and record and st.st_size == record.get("bytes") and self.is_verified(path, record, st):
            return
        check_file(path, record, full=True, recovery=recovery)
        if st is not None and record:
            self.add(path, record["sha256"], st)

    def save(self) -> None:
        """Write the stamps if any were added (atomically; to the user's cache when the folder is
        read-only; not at all, with a log line, when neither can be written)."""
        if not self.changed:
            return
        text = json.dumps({"format": VERIFIED_FORMAT, "files": self.files}, indent=1)
        for path in self._paths():
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(text)
                os.replace(tmp, path)
                self.changed = False
                return
            except OSError:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
        log.warning("cannot record that %s was verified (no writable place): the next open verifies it again",
                    self.folder)
