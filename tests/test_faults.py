"""Fault injection (issue 11): damaged files of every kind a catalog holds, lost journals,
concurrent writers, killed builds and a full disk. Each case asserts a one-line error naming
the file (or a correct result) and that no committed row is lost."""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, class_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, BuildError, build
from simdex.engine.catalog import Catalog
from simdex.engine.check import check_catalog
from simdex.engine.errors import SimdexError
from simdex.engine.integrity import DamagedFileError
from simdex.engine.searcher import Searcher

LAYERS = [("C11", 8), ("C12", 8)]
CLASSES = ["boot", "bag", "shirt"]


def make(root: Path, shards: int = 2, n: int = 40, built: bool = True) -> Catalog:
    cat = new_catalog(root, LAYERS)
    for s in range(shards):
        x, labels = class_objects(n, s + 1, CLASSES, 16)
        append_objects(cat, x, labels, f"job{s}", errors=[{"label": "boot", "reason": "decode", "detail": "bad"}])
    if built:
        build(cat, BuildConfig(retain=1.0))
    return cat


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("faults") / "cat").root


@pytest.fixture
def cat(healthy, tmp_path) -> Catalog:
    root = tmp_path / "cat"
    shutil.copytree(healthy, root)
    return Catalog.open(root)


def garble(path: Path, at: float = 0.5, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + n] = bytes((b ^ 0xFF) for b in data[i:i + n])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def current_build(cat: Catalog) -> Path:
    return cat.current_build_dir()


def one_line_error(args: list[str]) -> str:
    r = CliRunner().invoke(cli_main, args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    return r.output


# ---------------------------------------------------------------- damaged files

DAMAGE = {
    "shard truncated": (lambda c: truncate(c.root / "shards/000001.parquet"), "shards/000001.parquet"),
    "shard garbled": (lambda c: garble(c.root / "shards/000001.parquet"), "shards/000001.parquet"),
    "shard missing": (lambda c: (c.root / "shards/000002.parquet").unlink(), "shards/000002.parquet"),
    "errors file garbled": (lambda c: garble(c.root / "errors/000001.parquet"), "errors/000001.parquet"),
    "journal empty": (lambda c: (c.root / "jobs/job0.json").write_text(""), "jobs/job0.json"),
    "journal edited": (lambda c: (c.root / "jobs/job1.json").write_text(
        (c.root / "jobs/job1.json").read_text().replace('"rows": 40', '"rows": 39')), "jobs/job1.json"),
    "catalog.json edited": (lambda c: (c.root / "catalog.json").write_text(
        (c.root / "catalog.json").read_text().replace('"region": "bbox"', '"region": "mask"')), "catalog.json"),
    "CURRENT binary": (lambda c: (c.root / "CURRENT").write_bytes(b"\x00\xff\xfe\x81"), "CURRENT"),
    "CURRENT outside": (lambda c: (c.root / "CURRENT").write_text("../../../etc\n"), "CURRENT"),
    "CURRENT names no build": (lambda c: (c.root / "CURRENT").write_text("v000009-20260101T000000\n"), "CURRENT"),
    "tombstones garbled": (lambda c: (c.root / "deleted.parquet").write_bytes(b"PAR1 not parquet"), "deleted.parquet"),
    "matrix garbled": (lambda c: garble(current_build(c) / "z.npy", 0.7), "z.npy"),
    "codes truncated": (lambda c: truncate(current_build(c) / "codes.npy"), "codes.npy"),
    "build.json edited": (lambda c: (current_build(c) / "build.json").write_text("{}"), "build.json"),
    "pruning garbled": (lambda c: garble(current_build(c) / "pruning.npz"), "pruning.npz"),
    "manifest edited": (lambda c: (current_build(c) / "manifest.json").write_text(
        (current_build(c) / "manifest.json").read_text().replace('"bytes": 1', '"bytes": 2', 1)), "manifest.json"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_check_finds_every_damaged_file(cat, kind):
    damage, name = DAMAGE[kind]
    assert check_catalog(cat.root).ok
    damage(cat)
    report = check_catalog(cat.root)
    assert not report.ok
    assert any(name in p.path for p in report.problems), report.problems
    assert all(p.recovery for p in report.problems if p.path.endswith(name))
    out = one_line_error(["check", "--catalog", str(cat.root)])
    assert name in out and "damaged" in out


QUERY_DAMAGE = ["shard truncated", "shard missing", "journal empty", "journal edited", "catalog.json edited",
                "CURRENT binary", "CURRENT outside", "CURRENT names no build", "tombstones garbled", "matrix garbled",
                "codes truncated", "build.json edited", "pruning garbled", "manifest edited"]


@pytest.mark.parametrize("kind", QUERY_DAMAGE)
def test_a_damaged_file_is_an_error_naming_it_never_a_result(cat, kind):
    damage, name = DAMAGE[kind]
    damage(cat)
    out = one_line_error(["query", "--catalog", str(cat.root), "3"])
    assert name in out
    assert len(out.strip().splitlines()) == 1
    with pytest.raises(SimdexError, match=name.replace(".", r"\.")):
        Searcher.open(cat.root).search(ids=[3], k=5)


def test_sql_on_a_damaged_shard_is_an_error(cat):
    truncate(cat.root / "shards/000002.parquet")
    out = one_line_error(["sql", "--catalog", str(cat.root), "SELECT count(*) FROM objects"])
    assert "shards/000002.parquet" in out


def test_a_new_build_repairs_a_damaged_build(cat):
    garble(current_build(cat) / "z.npy", 0.7)
    build(cat, BuildConfig(retain=1.0))
    assert check_catalog(cat.root).ok or all("v000001" in p.path for p in check_catalog(cat.root).problems)
    assert Searcher.open(cat.root).search(ids=[3], k=5).num_rows == 5


def test_check_cli_on_a_healthy_catalog(cat):
    r = CliRunner().invoke(cli_main, ["check", "--catalog", str(cat.root)])
    assert r.exit_code == 0 and "intact" in r.output


# ---------------------------------------------------------------- lost journals, orphans, quarantine

def test_a_lost_journal_quarantines_its_shard_and_its_ids_are_not_reused(cat):
    before = cat.counters()
    (cat.root / "jobs/job1.json").unlink()
    report = check_catalog(cat.root)
    assert any("shards/000002.parquet" in p.path and "no job journal" in p.problem for p in report.problems)
    x, labels = class_objects(10, 9, CLASSES, 16)
    ids = append_objects(cat, x, labels, "later")
    moved = cat.quarantined_files()
    assert {p.name for p in moved} == {"000002.parquet"} and len(moved) == 2  # the shard and its errors file
    assert ids.min() >= before["object_id"]  # no id of the quarantined shard is given out again
    assert not (cat.root / "shards/000002.parquet").exists()
    assert (cat.root / "shards" / f"{before['seq']:06d}.parquet").exists()
    assert any("quarantine" in n for n in check_catalog(cat.root).notes)


def test_a_killed_commit_leaves_a_quarantined_file_and_no_lost_row(cat):
    orphan = cat.root / "shards/000003.parquet"  # renamed, then killed before the journal
    shutil.copy(cat.root / "shards/000001.parquet", orphan)
    n = cat.num_objects
    x, labels = class_objects(5, 11, CLASSES, 16)
    append_objects(cat, x, labels, "next")
    assert cat.num_objects == n + 5
    assert any(p.name == "000003.parquet" for p in cat.quarantined_files())


# ---------------------------------------------------------------- concurrent writers

def _delete(root: str, ids: list[int]) -> None:
    Catalog.open(root).add_deleted(ids)


def test_ten_concurrent_deletes_lose_nothing(cat):
    ctx = multiprocessing.get_context("fork")
    batches = [[i * 3, i * 3 + 1, i * 3 + 2] for i in range(10)]
    procs = [ctx.Process(target=_delete, args=(str(cat.root), b)) for b in batches]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(cat.deleted_ids().tolist()) == list(range(30))


def test_a_reader_does_not_block_while_a_writer_holds_the_commit_lock(cat):
    with cat.commit_lock():
        t0 = time.monotonic()
        assert Searcher.open(cat.root).search(ids=[3], k=3).num_rows == 3
        assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- killed builds

KILLED_BUILD = """
import os, sys, time
from simdex.engine.catalog import Catalog
p = Catalog.open(sys.argv[1]).new_build_dir()
(p / "z.npy").write_bytes(b"x" * 1000)
print(p.name, flush=True)
time.sleep(60)
"""


def test_a_killed_builds_folder_is_removed_by_the_next_build_a_running_ones_is_not(cat):
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(cat.root)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    names = [p.stdout.readline().strip() for p in procs]
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    try:
        build(cat, BuildConfig(retain=1.0))
        left = {p.name for p in (cat.root / "builds").iterdir() if p.name.startswith(".")}
        assert names[0] not in left  # killed: removed
        assert names[1] in left  # still running: kept
    finally:
        procs[1].kill()
        procs[1].wait()
        for p in procs:
            p.stdout.close()


# ---------------------------------------------------------------- a full disk

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(cat, monkeypatch):
    version = cat.current_version
    monkeypatch.setattr(np, "save", _enospc)
    with pytest.raises(BuildError, match="No space left on device") as info:
        build(cat, BuildConfig(retain=1.0))
    assert "\n" not in str(info.value)
    assert cat.current_version == version
    assert not [p for p in (cat.root / "builds").iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert build(cat, BuildConfig(retain=1.0)).version != version  # resumes once space is freed


def test_a_full_disk_during_an_index_commit_loses_no_committed_row(cat, monkeypatch):
    import simdex.engine.catalog as catalog_module

    n = cat.num_objects
    x, labels = class_objects(7, 21, CLASSES, 16)
    monkeypatch.setattr(catalog_module.json, "dump", _enospc)
    with pytest.raises(OSError):
        append_objects(cat, x, labels, "full")
    monkeypatch.undo()
    assert cat.num_objects == n  # nothing half-committed
    assert not [p for p in (cat.root / "jobs").iterdir() if p.name.startswith(".")]
    append_objects(cat, x, labels, "full")  # resumes: the shard no journal listed is quarantined
    assert cat.num_objects == n + 7
    assert check_catalog(cat.root).ok


def test_a_full_disk_while_writing_sql_output_leaves_no_partial_file(cat, tmp_path, monkeypatch):
    import simdex.cli.sql as cli_sql

    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "rows.parquet"

    def full_writer(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_sql, "_write_text", full_writer)
    r = CliRunner().invoke(cli_main, ["sql", "-c", str(cat.root), "--format", "csv", "-o", str(out),
                                      "SELECT * FROM objects"])
    assert r.exit_code == 1 and "No space left on device" in r.output
    assert list((tmp_path / "out").iterdir()) == []


def test_tombstones_of_the_wrong_type_are_an_error(cat):
    pq.write_table(pa.table({"object_id": pa.array(["a"], pa.string())}), cat.root / "deleted.parquet")
    with pytest.raises(DamagedFileError, match="deleted.parquet"):
        cat.deleted_ids()
