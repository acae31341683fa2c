"""`simdex check`: verify every file of a catalog against what was committed, and say how to
recover from what is wrong.

Checked: catalog.json (its checksum and fields), every job journal (checksum, structure), every
committed shard and errors file (size, SHA-256, a readable Parquet footer with the committed
number of rows), the tombstones, CURRENT (names a build folder), every build's files against
its manifest (size, SHA-256, matrix headers), files no journal lists, quarantined files and the
folders of killed builds. Nothing is changed: the check only reads.

Example:
    >>> report = check_catalog("cat/")           # doctest: +SKIP
    >>> report.ok, len(report.problems)
    (True, 0)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simdex.engine.build_files import BuildFiles
from simdex.engine.catalog import _BUILD_RE, BUILD_TMP_PREFIX, BUILDS_DIR, Catalog
from simdex.engine.integrity import CatalogError, DamagedFileError, check_file


@dataclass
class Problem:
    """One thing wrong: the file, what is wrong with it, how to recover."""

    path: str
    problem: str
    recovery: str


@dataclass
class CheckReport:
    root: Path
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, exc: DamagedFileError | CatalogError, path: str | os.PathLike | None = None) -> None:
        if isinstance(exc, DamagedFileError):
            self.problems.append(Problem(self._rel(exc.path), exc.problem, exc.recovery))
        else:
            self.problems.append(Problem(self._rel(path or self.root), str(exc), ""))

    def _rel(self, path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


def check_catalog(root: str | os.PathLike) -> CheckReport:
    """Verify every file of the catalog at `root` (see the module). Raises CatalogError only when
    `root` is not a catalog at all; every damage is a Problem of the report."""
    root = Path(root)
    report = CheckReport(root)
    t0 = time.perf_counter()
    try:
        cat = Catalog.open(root)
    except DamagedFileError as exc:
        report.add(exc)
        report.elapsed_s = time.perf_counter() - t0
        return report
    report.files_checked += 1
    commits = _check_journals(cat, report)
    if commits is not None:
        _check_shards(cat, commits, report)
        for path in cat.unlisted_files(commits):
            report.problems.append(Problem(
                report._rel(path), "listed by no job journal (a killed job's, or its journal was lost); "
                "it is not read", "the next `simdex index` moves it to quarantine/ (nothing is deleted); "
                "if its journal was lost, restore the journal from a backup"))
    for path in cat.quarantined_files():
        report.notes.append(f"{report._rel(path)} is in quarantine (listed by no journal when a writer found it); "
                            "its ids are not reused; delete it yourself once you know it is not needed")
    _check_tombstones(cat, report)
    _check_builds(cat, report)
    report.elapsed_s = time.perf_counter() - t0
    return report


def _check_journals(cat: Catalog, report: CheckReport) -> list[dict] | None:
    commits = []
    damaged = False
    for path in sorted((cat.root / "jobs").glob("*.json")):
        try:
            j = cat._read_journal(path)
        except DamagedFileError as exc:
            report.add(exc)
            damaged = True
            continue
        report.files_checked += 1
        commits += j["commits"]
    return None if damaged else sorted(commits, key=lambda c: c["seq"])


def _check_shards(cat: Catalog, commits: list[dict], report: CheckReport) -> None:
    recovery = ("restore it from a backup of the catalog, or index its source again into a new catalog "
                "(the objects it holds cannot be searched until then)")
    for c in commits:
        for key, rows_key in (("shard", "rows"), ("errors", "error_rows")):
            rel = c.get(key)
            if not rel:
                continue
            path = cat.root / rel
            try:
                check_file(path, (c.get("files") or {}).get(rel), full=True, recovery=recovery)
                meta = pq.read_metadata(path)
                if meta.num_rows != c[rows_key]:
                    raise DamagedFileError(path, f"{meta.num_rows} rows, {c[rows_key]} were committed", recovery)
            except DamagedFileError as exc:
                report.add(exc)
                continue
            except (OSError, pa.ArrowException) as exc:
                report.add(DamagedFileError(path, f"unreadable Parquet ({str(exc).splitlines()[0]})", recovery))
                continue
            report.files_checked += 1
            report.bytes_checked += path.stat().st_size


def _check_tombstones(cat: Catalog, report: CheckReport) -> None:
    try:
        cat.deleted_ids()
    except DamagedFileError as exc:
        report.add(exc)


def _check_builds(cat: Catalog, report: CheckReport) -> None:
    rebuild = f"run `simdex build --catalog {cat.root}` to make a new build"
    try:
        current = cat.current_version
    except DamagedFileError as exc:
        report.add(exc)
        current = None
    builds = cat.root / BUILDS_DIR
    for folder in sorted(builds.iterdir()) if builds.is_dir() else ():
        if folder.name.startswith(BUILD_TMP_PREFIX):
            report.notes.append(f"{report._rel(folder)} is the folder of a build that is running or was killed; "
                                "the next `simdex build` removes it if it was killed")
            continue
        if not _BUILD_RE.match(folder.name) or not folder.is_dir():
            continue
        files = BuildFiles(folder)
        recovery = rebuild if folder.name == current else f"{rebuild}, or delete {folder} (not current)"
        names, damaged = files.damaged_files(full=True, recovery=recovery)
        for exc in damaged:
            report.add(exc)
        if not names and not damaged:
            report.notes.append(f"{report._rel(folder)} was published without a manifest (an older simdex): "
                                "its files cannot be verified; a new build has one")
        bad = {exc.path.name for exc in damaged}
        for name in names:
            if name not in bad:
                report.files_checked += 1
                report.bytes_checked += (folder / name).stat().st_size
