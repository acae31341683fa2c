"""The catalog: the one object that knows where everything of an index lives on disk.

A catalog is a folder::

    catalog.json            format version, the model (sha256, config), φ, num_features, region mode
    shards/000001.parquet   committed object rows, one per object (numbered in commit order)
    errors/000001.parquet   committed error rows (inputs that gave no object), same numbering
    jobs/<job>.json         one journal per indexed source: its commits and where to resume
    builds/<version>/       build artifacts (pruning, normalisation, Ω, FAISS), one folder per build
    CURRENT                 the name of the current build (swapped atomically)
    deleted.parquet         tombstones: object ids hidden from every result
    quarantine/<time>/      files no journal lists, moved aside (never deleted) by a later writer
    .lock                   held (flock) by the one indexing job writing to the catalog
    .commit.lock            held (flock, briefly) by every writer while it commits: index, build, delete

Nobody else joins paths into a catalog: readers use `shards()` (the one `ShardReader`), `iter_features()`,
`read_objects()`, `read_errors()`, and `current_build()` (a build's files: `BuildFiles`); the indexer uses `lock()`, `begin_job()`, `new_temp_path()`
and `commit()`; the build uses `new_build_dir()` and `publish_build()`.

Commit protocol (what makes SIGKILL safe): a shard is written under a temporary name,
renamed to its final name, and then the job's journal is replaced atomically
(write-temp + `os.replace`) with the commit appended, with the size and SHA-256 of each
file it commits. The journal is the commit point: a shard file that no journal lists is
invisible to readers; the next writer moves it to quarantine/ (a killed job's, or one whose
journal was lost) and never deletes it, and its ids are never given out again. Object ids,
image ids and shard numbers are dense and assigned in commit order, so a resumed job
produces the same ids as an uninterrupted one. Writers serialise their commits with a
blocking flock on `.commit.lock`; readers take no lock.

Integrity (engine.integrity): catalog.json and the journals carry a checksum of their own
content; a shard's size is checked whenever it is read, its checksum by `simdex check`
(engine.check); CURRENT must name a build folder of builds/.

This module does not import torch, so opening a catalog is fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simdex.engine.build_files import BuildFiles
from simdex.engine.errors import as_object_ids
from simdex.engine.integrity import CatalogError, DamagedFileError, check_file, file_record, seal, unseal
from simdex.engine.shard_reader import ShardReader

log = logging.getLogger(__name__)

FORMAT = "simdex-catalog/1"
JOURNAL_FORMAT = "simdex-job/1"
INFO_FILE = "catalog.json"
CURRENT_FILE = "CURRENT"
DELETED_FILE = "deleted.parquet"
LOCK_FILE, COMMIT_LOCK_FILE = ".lock", ".commit.lock"
SHARDS_DIR, ERRORS_DIR, JOBS_DIR, BUILDS_DIR, QUARANTINE_DIR = "shards", "errors", "jobs", "builds", "quarantine"
VIEWS_DIR = "views"  # augmented views of sampled images, one file per job (`write_views`): self-supervised Ω
BUILD_TMP_PREFIX, BUILD_OWNER_FILE = ".tmp-", ".owner"
REGION_MODES = ("bbox", "mask", "full", "grid2", "grid4", "mask+grid2")
_BUILD_OWNERS: dict[str, object] = {}  # open .owner files of this process's unpublished builds


def region_grid(region: str) -> int:
    """g of a region mode with a grid (the object's box split in g×g cells: `gridG`, and the mask's
    cells of `mask+gridG`); 1 for the others."""
    return int(region.rsplit("grid", 1)[1]) if "grid" in region else 1


def region_cells(region: str) -> int:
    """Means per channel and layer that a region mode stores: g² (`gridG`), 1 + g² (`mask+gridG`:
    the whole mask, then its part in each cell), 1 (the others)."""
    return len(region_cell_names(region))


def region_cell_names(region: str) -> list[str]:
    """The suffix of each cell's name in φ as the catalog lays it out (`C11@01`: row 0, column 1;
    `C11@m`: the whole mask of `mask+gridG`); [""] for a region of one cell."""
    g = region_grid(region)
    grid = [f"{r}{c}" for r in range(g) for c in range(g)] if g > 1 else [""]
    return ["m", *grid] if region.startswith("mask+") else grid
_BUILD_RE = re.compile(r"^v(\d{6})-")
_VERSION_RE = re.compile(r"v\d{6}-\d{8}T\d{6}")
_REQUIRED_INFO = ("sha256", "config", "phi", "num_features", "region")
_RESTORE = "restore it from a backup of the catalog"
_REBUILD = "run `simdex build --catalog {root}` to make a new build"


def _check_info(info: dict, path: Path) -> None:
    """Types and bounds of catalog.json's fields (DamagedFileError naming the file)."""
    def bad(what):
        raise DamagedFileError(path, what, _RESTORE)

    if not isinstance(info.get("sha256"), str) or not isinstance(info.get("region"), str):
        bad("sha256 and region must be strings")
    if info["region"] not in REGION_MODES:
        bad(f"unknown region {info['region']!r}")
    n, phi = info.get("num_features"), info.get("phi")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= 1 << 20:
        bad(f"num_features must be an integer in [1, 2^20], got {n!r}")
    if not isinstance(phi, list) or not all(isinstance(p, dict) for p in phi):
        bad("phi must be a list of layers")
    offset = 0
    for p in phi:
        if not isinstance(p.get("name"), str) or any(
                not isinstance(p.get(k), int) or isinstance(p.get(k), bool) or p[k] < 0 for k in ("channels", "stride", "offset")):
            bad(f"layer {p!r} of phi needs a name and non-negative integer channels, stride, offset")
        if p["offset"] != offset:
            bad(f"layer {p['name']} of phi starts at {p['offset']}, the layers before it end at {offset}")
        offset += p["channels"]
    if offset != n:
        bad(f"the channels of phi add up to {offset}, num_features is {n}")


def _check_journal(j: object, path: Path) -> dict:
    """Structure of a job journal (DamagedFileError naming the file)."""
    recovery = f"{_RESTORE}; without it the shards this job committed are not read (see `simdex check`)"
    j = unseal(j, path, recovery)
    commits = j.get("commits")
    if not isinstance(j.get("job_id"), str) or not isinstance(commits, list) or not isinstance(j.get("next_ordinal"), int):
        raise DamagedFileError(path, "not a job journal (job_id, next_ordinal, commits)", recovery)
    for c in commits:
        ok = isinstance(c, dict) and all(isinstance(c.get(k), int) for k in ("seq", "rows", "error_rows", "images")) \
            and all(isinstance(c.get(k), list) and len(c[k]) == 2 and all(isinstance(v, int) for v in c[k])
                    for k in ("object_ids", "image_ids", "ordinals"))
        for key in ("shard", "errors"):
            ok = ok and (c.get(key) is None or (isinstance(c[key], str) and re.fullmatch(
                rf"{SHARDS_DIR if key == 'shard' else ERRORS_DIR}/\d{{6}}\.parquet", c[key]) is not None))
        if not ok:
            raise DamagedFileError(path, f"commit {c!r:.80} is malformed", recovery)
    return j


def _id_ranges(path: Path) -> dict[str, int]:
    """The largest object_id and image_id a Parquet file holds, from its footer's statistics
    (read from the column when the footer has none); {} for an unreadable file."""
    try:
        meta = pq.read_metadata(path)
        names = meta.schema.names
        out = {}
        for key in ("object_id", "image_id"):
            if key not in names or meta.num_rows == 0:
                continue
            col = names.index(key)
            tops = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)]
            if all(st is not None and st.has_min_max for st in tops):
                out[key] = max(int(st.max) for st in tops)
            else:
                out[key] = int(pq.read_table(path, columns=[key]).column(key).to_numpy().max())
        return out
    except (OSError, ValueError, pa.ArrowException):
        return {}


def _write_json_atomic(path: Path, obj: dict) -> None:
    """Write `obj` beside `path` and rename it onto `path`: readers see the old or the new file,
    and a full disk leaves the old one (and no temporary file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


class Catalog:
    """An on-disk catalog of objects and their features.

    Example:
        >>> cat = Catalog.open("cat/")                        # doctest: +SKIP
        >>> for ids, X in cat.iter_features(batch_rows=8192):  # doctest: +SKIP
        ...     ...  # ids int64 (n,), X float32 (n, cat.num_features)
    """

    def __init__(self, root: Path, info: dict):
        self.root = Path(root)
        self.info = info

    # ------------------------------------------------------------------ open / create

    @classmethod
    def create(cls, root: str | os.PathLike, model_info: dict) -> Catalog:
        """Create a new catalog in `root` (a missing or empty folder).

        Args:
            model_info: what every object's features depend on: `sha256` and `config` of the
                model, `phi` as [{name, channels, stride, offset}], `num_features`, `region`
                (bbox|mask|full); any other keys (e.g. `model_path`) are stored too.

        Raises:
            CatalogError: `root` already holds a catalog or other files, or model_info lacks a key.
        """
        root = Path(root)
        missing = [k for k in _REQUIRED_INFO if k not in model_info]
        if missing:
            raise CatalogError(f"model_info lacks {', '.join(missing)}")
        if model_info["region"] not in REGION_MODES:
            raise CatalogError(f"region must be one of {', '.join(REGION_MODES)}, got {model_info['region']!r}")
        if (root / INFO_FILE).exists():
            raise CatalogError(f"{root} already holds a catalog; open it instead")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise CatalogError(f"{root} exists and is not an empty folder; choose a new folder for the catalog")
        root.mkdir(parents=True, exist_ok=True)
        for sub in (SHARDS_DIR, ERRORS_DIR, JOBS_DIR, BUILDS_DIR):
            (root / sub).mkdir(exist_ok=True)
        phi = [dict(name=str(p["name"]), channels=int(p["channels"]), stride=int(p["stride"]),
                    offset=int(p["offset"])) for p in model_info["phi"]]
        if sum(p["channels"] for p in phi) != int(model_info["num_features"]):
            raise CatalogError("model_info: the channels of phi do not add up to num_features")
        info = seal({
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: v for k, v in model_info.items() if k not in ("phi",)},
            "phi": phi,
            "num_features": int(model_info["num_features"]),
        })
        _write_json_atomic(root / INFO_FILE, info)
        log.info("created catalog %s (model %s, %d features)", root, info["sha256"][:12], info["num_features"])
        return cls(root, info)

    @classmethod
    def open(cls, root: str | os.PathLike) -> Catalog:
        """Open an existing catalog.

        Raises:
            CatalogError: no such folder, not a catalog, unreadable or of an unknown format.
        """
        root = Path(root)
        if not root.exists():
            raise CatalogError(f"no catalog at {root}: create one with `simdex index SOURCE --catalog {root}`")
        path = root / INFO_FILE
        if not path.is_file():
            raise CatalogError(f"{root} is not a simdex catalog (it has no {INFO_FILE}); "
                               f"create one with `simdex index SOURCE --catalog DIR`")
        try:
            info = _read_json(path)
        except (OSError, ValueError) as exc:
            raise DamagedFileError(path, f"unreadable ({exc})", _RESTORE) from None
        info = unseal(info, path, _RESTORE)
        if info.get("format") != FORMAT:
            raise CatalogError(f"{root}: unsupported catalog format {info.get('format')!r}, this simdex reads {FORMAT}")
        _check_info(info, path)
        return cls(root, info)

    @classmethod
    def open_or_create(cls, root: str | os.PathLike, model_info: dict) -> Catalog:
        """Open `root` if it holds a catalog, else create one with `model_info`.

        The model and region of an existing catalog are not checked here; see `check_compatible`.
        """
        root = Path(root)
        if (root / INFO_FILE).exists():
            return cls.open(root)
        return cls.create(root, model_info)

    def check_compatible(self, model_info: dict) -> None:
        """Raise CatalogError unless features made with `model_info` can join this catalog."""
        mine, theirs = self.info["sha256"], model_info.get("sha256")
        if theirs != mine:
            where = f" ({self.info['model_path']})" if self.info.get("model_path") else ""
            raise CatalogError(
                f"catalog {self.root} was indexed with model {mine[:12]}…{where}, but this run uses "
                f"model {str(theirs)[:12]}…; features of different models cannot be compared. "
                f"Pass --model with the catalog's model, or index into a new catalog folder."
            )
        if model_info.get("region", self.region) != self.region:
            raise CatalogError(
                f"catalog {self.root} holds features of region mode {self.region!r}, this run asks for "
                f"{model_info['region']!r}; use --region {self.region} or a new catalog folder"
            )

    # ------------------------------------------------------------------ properties

    @property
    def phi(self) -> list[dict]:
        """The layers of φ in feature order: [{name, channels, stride, offset}]."""
        return self.info["phi"]

    @property
    def num_features(self) -> int:
        return int(self.info["num_features"])

    @property
    def region(self) -> str:
        return self.info["region"]

    @property
    def model_sha256(self) -> str:
        return self.info["sha256"]

    @property
    def num_objects(self) -> int:
        """Committed object rows (tombstoned objects included; see `deleted_ids`)."""
        return sum(c["rows"] for j in self.journals() for c in j["commits"])

    @property
    def num_errors(self) -> int:
        return sum(c["error_rows"] for j in self.journals() for c in j["commits"])

    @property
    def num_images(self) -> int:
        return sum(c["images"] for j in self.journals() for c in j["commits"])

    def __repr__(self) -> str:
        return f"Catalog({str(self.root)!r}, objects={self.num_objects})"

    # ------------------------------------------------------------------ journals and commits

    def journals(self) -> list[dict]:
        """Every job's journal (committed state only), in the order the jobs started."""
        out = []
        jobs = self.root / JOBS_DIR
        if not jobs.is_dir():
            return out
        for p in jobs.glob("*.json"):
            out.append(self._read_journal(p))
        return sorted(out, key=lambda j: (j.get("seq_started", 0), j["job_id"]))

    def _read_journal(self, path: Path) -> dict:
        try:
            j = _read_json(path)
        except (OSError, ValueError) as exc:
            raise DamagedFileError(path, f"unreadable job journal ({exc})",
                                   f"{_RESTORE}; without it the shards this job committed are not read") from None
        return _check_journal(j, path)

    def journal(self, job_id: str) -> dict | None:
        p = self._journal_path(job_id)
        return self._read_journal(p) if p.is_file() else None

    def job_sources(self, job_id: str) -> dict[int, str]:
        """{ordinal: source} of every image the job committed a row for (objects and errors), read
        from its shards' two columns; empty for a job without commits."""
        j = self.journal(job_id)
        out: dict[int, str] = {}
        for c in (j or {}).get("commits", []):
            for key in ("shard", "errors"):
                if c.get(key):
                    t = pq.read_table(self.root / c[key], columns=["ordinal", "source"])
                    out.update(zip(t.column("ordinal").to_pylist(), t.column("source").to_pylist(), strict=True))
        return out

    def _journal_path(self, job_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", job_id):
            raise CatalogError(f"bad job id {job_id!r}")
        return self.root / JOBS_DIR / f"{job_id}.json"

    def _commits(self) -> list[dict]:
        return sorted((c for j in self.journals() for c in j["commits"]), key=lambda c: c["seq"])

    def counters(self) -> dict:
        """The next shard number, object id and image id to assign (dense, in commit order).

        Files no journal lists (orphans, quarantined files) count too: their ids and numbers are
        never given out again, even when the journal that listed them was lost."""
        nxt = {"seq": 1, "object_id": 0, "image_id": 0}
        commits = self._commits()
        for c in commits:
            nxt["seq"] = max(nxt["seq"], c["seq"] + 1)
            nxt["object_id"] = max(nxt["object_id"], c["object_ids"][1])
            nxt["image_id"] = max(nxt["image_id"], c["image_ids"][1])
        for path in self.unlisted_files(commits) + self.quarantined_files():
            m = re.match(r"^(\d{6})\.parquet$", path.name)
            if m:
                nxt["seq"] = max(nxt["seq"], int(m.group(1)) + 1)
            for key, top in _id_ranges(path).items():
                nxt[key] = max(nxt[key], top + 1)
        return nxt

    def listed_files(self, commits: list[dict] | None = None) -> dict[str, dict | None]:
        """Every committed shard and errors file (relative name) with its {bytes, sha256} record
        (None for a file committed before simdex recorded them)."""
        out = {}
        for c in self._commits() if commits is None else commits:
            records = c.get("files") or {}
            for rel in (c.get("shard"), c.get("errors")):
                if rel:
                    out[rel] = records.get(rel)
        return out

    def unlisted_files(self, commits: list[dict] | None = None) -> list[Path]:
        """Final-named files in shards/ and errors/ that no journal lists (a killed job's shard
        between its rename and its journal, or a shard whose journal was lost)."""
        listed = self.listed_files(commits)
        out = []
        for sub in (SHARDS_DIR, ERRORS_DIR):
            folder = self.root / sub
            if folder.is_dir():
                out += [p for p in sorted(folder.iterdir())
                        if p.is_file() and not p.name.startswith(".") and f"{sub}/{p.name}" not in listed]
        return out

    def quarantined_files(self) -> list[Path]:
        folder = self.root / QUARANTINE_DIR
        return sorted(p for p in folder.rglob("*.parquet") if p.is_file()) if folder.is_dir() else []

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the catalog's indexing lock; raise CatalogError if another job holds it.

        On entry, a killed writer's temporary files are removed and the files no journal lists
        are moved to quarantine/ (see `quarantine_unlisted`).
        """
        f = open(self.root / LOCK_FILE, "a+")
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CatalogError(f"another job is writing to {self.root}; wait for it to finish") from None
            with self.commit_lock():
                self._remove_temporaries()
                self.quarantine_unlisted()
            yield
        finally:
            f.close()  # releases the flock

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        """Serialise a commit with every other writer's (blocking flock; held for milliseconds).
        Readers never take it."""
        with open(self.root / COMMIT_LOCK_FILE, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield

    def _remove_temporaries(self) -> None:
        """Temporary files of a killed writer: never committed, so nothing is lost."""
        for sub in (SHARDS_DIR, ERRORS_DIR, JOBS_DIR, VIEWS_DIR):
            folder = self.root / sub
            for p in folder.iterdir() if folder.is_dir() else ():
                if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                    log.info("removing %s/%s, left behind by an interrupted job", sub, p.name)
                    p.unlink()

    def quarantine_unlisted(self) -> list[Path]:
        """Move the files no journal lists to quarantine/<UTC time>/ (never delete them) and
        return where they went. Their ids are not reused (`counters`). Call under `commit_lock`."""
        moved = []
        unlisted = self.unlisted_files()
        if not unlisted:
            return moved
        folder = self.root / QUARANTINE_DIR / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for p in unlisted:
            dest = folder / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
            moved.append(dest)
            log.warning("%s/%s is listed by no job journal (a killed job's or a lost journal's): moved to %s",
                        p.parent.name, p.name, dest.relative_to(self.root))
        return moved

    def begin_job(self, job_id: str, spec: dict) -> dict:
        """Return the journal of `job_id`, creating it (with `spec`) if it is new.

        `spec` is what the job is (source, number of images, options); it is stored once.
        The caller must hold `lock()`.
        """
        j = self.journal(job_id)
        if j is not None:
            return j
        with self.commit_lock():
            j = {"format": JOURNAL_FORMAT, "job_id": job_id, **spec, "next_ordinal": 0, "commits": [],
                 "seq_started": self.counters()["seq"],
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_json_atomic(self._journal_path(job_id), seal(j))
        return j

    def new_temp_path(self, kind: str = "shard") -> Path:
        """A fresh temporary file name for a shard (`kind='shard'`) or errors file (`'errors'`)."""
        sub = {"shard": SHARDS_DIR, "errors": ERRORS_DIR}[kind]
        return self.root / sub / f".{uuid.uuid4().hex}.parquet.tmp"

    def commit(self, job_id: str, *, shard_tmp: Path | None, errors_tmp: Path | None, ordinal_start: int,
               next_ordinal: int, first_object_id: int, rows: int, first_image_id: int, images: int,
               error_rows: int) -> dict:
        """Publish one shard (and its errors file) of a job: rename them to their final
        names, then append the commit to the job's journal atomically (the commit point).

        The shard's rows carry object ids [first_object_id, first_object_id + rows) and
        image ids [first_image_id, first_image_id + images): the ones `counters()` returned
        before the shard was written. Returns the new journal. The caller must hold `lock()`.
        """
        with self.commit_lock():
            return self._commit(job_id, shard_tmp, errors_tmp, ordinal_start, next_ordinal, first_object_id, rows,
                                first_image_id, images, error_rows)

    def _commit(self, job_id, shard_tmp, errors_tmp, ordinal_start, next_ordinal, first_object_id, rows,
                first_image_id, images, error_rows) -> dict:
        j = self.journal(job_id)
        if j is None:
            raise CatalogError(f"no job {job_id} in {self.root}; call begin_job first")
        if j["next_ordinal"] != ordinal_start:
            raise CatalogError(f"job {job_id}: commit starts at ordinal {ordinal_start}, journal at {j['next_ordinal']}")
        nxt = self.counters()
        if (first_object_id, first_image_id) != (nxt["object_id"], nxt["image_id"]):
            raise CatalogError(f"commit ids ({first_object_id}, {first_image_id}) do not follow the catalog's "
                               f"({nxt['object_id']}, {nxt['image_id']}): was it written without the lock?")
        seq = nxt["seq"]
        commit = {"seq": seq, "shard": None, "errors": None, "ordinals": [ordinal_start, next_ordinal],
                  "object_ids": [nxt["object_id"], nxt["object_id"] + rows],
                  "image_ids": [nxt["image_id"], nxt["image_id"] + images],
                  "rows": rows, "error_rows": error_rows, "images": images, "files": {}}
        if shard_tmp is not None and rows:
            commit["shard"] = f"{SHARDS_DIR}/{seq:06d}.parquet"
            commit["files"][commit["shard"]] = file_record(shard_tmp)
            os.replace(shard_tmp, self.root / commit["shard"])
        elif shard_tmp is not None:
            Path(shard_tmp).unlink(missing_ok=True)
        if errors_tmp is not None and error_rows:
            commit["errors"] = f"{ERRORS_DIR}/{seq:06d}.parquet"
            commit["files"][commit["errors"]] = file_record(errors_tmp)
            os.replace(errors_tmp, self.root / commit["errors"])
        elif errors_tmp is not None:
            Path(errors_tmp).unlink(missing_ok=True)
        j["commits"].append(commit)
        j["next_ordinal"] = next_ordinal
        j["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_json_atomic(self._journal_path(job_id), seal(j))
        return j

    # ------------------------------------------------------------------ reading objects

    def shard_paths(self) -> list[Path]:
        """Committed object shard files, in commit order; each one's size is checked against the
        size committed (DamagedFileError when missing or truncated)."""
        return self._checked_paths("shard")

    def error_shard_paths(self) -> list[Path]:
        """Committed errors files, in commit order (sizes checked, as for shards)."""
        return self._checked_paths("errors")

    def _checked_paths(self, key: str) -> list[Path]:
        out = []
        for c in self._commits():
            if c.get(key):
                path = self.root / c[key]
                check_file(path, (c.get("files") or {}).get(c[key]), full=False, hash_small=False,
                           recovery=f"{_RESTORE}, or index its source again into a new catalog (`simdex check` lists every damaged file)")
                out.append(path)
        return out

    def shards(self, first: int = 0) -> ShardReader:
        """The one reader of the committed object shards (from the `first`-th shard on)."""
        fields = [f if f.name != "features" else pa.field("features", pa.list_(pa.float32(), self.num_features))
                  for f in OBJECT_BASE_SCHEMA]
        return ShardReader(self.shard_paths()[first:], self.num_features, pa.schema(fields))

    def iter_features(self, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream (object_ids int64 (n,), features float32 (n, N)) over the shards, at most
        `batch_rows` rows at a time (memory is bounded by one batch). Tombstoned objects are
        included; filter with `deleted_ids()`."""
        return self.shards().iter_features(batch_rows)

    def read_objects(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The object rows without the `features` column (all columns, or `columns`),
        shards of different sources unified by column name (missing columns are null)."""
        reader = self.shards()
        if columns is not None and not reader.paths:
            columns = [c for c in columns if c in reader.columns]
        try:
            return reader.read(columns)
        except KeyError as exc:
            raise CatalogError(exc.args[0]) from None

    def read_errors(self) -> pa.Table:
        """The errors table: image_id, source, ordinal, label, reason, detail."""
        tables = []
        for p in self.error_shard_paths():
            try:
                tables.append(pq.read_table(p))
            except (OSError, pa.ArrowException) as exc:
                raise DamagedFileError(p, f"unreadable Parquet ({exc})", _RESTORE) from None
        if not tables:
            return ERRORS_SCHEMA.empty_table()
        return pa.concat_tables(tables, promote_options="default")

    # ------------------------------------------------------------------ builds

    def new_build_dir(self) -> Path:
        """A fresh, empty temporary folder under builds/ to write a build into.

        The folder holds an flock on its `.owner` file while this process lives, so the next
        build can tell a killed build's folder (lock free: removed) from a running one's."""
        builds = self.root / BUILDS_DIR
        builds.mkdir(exist_ok=True)
        self.remove_killed_builds()
        name = uuid.uuid4().hex
        staging = builds / f".new-{name}"  # not yet locked: no cleaner looks at .new-*
        staging.mkdir()
        owner = open(staging / BUILD_OWNER_FILE, "a+")
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        p = builds / f"{BUILD_TMP_PREFIX}{name}"
        os.rename(staging, p)
        _BUILD_OWNERS[str(p.resolve())] = owner
        return p

    def remove_killed_builds(self) -> list[str]:
        """Remove the temporary folders of builds that were killed (their `.owner` lock is free)."""
        removed = []
        builds = self.root / BUILDS_DIR
        for p in builds.glob(f"{BUILD_TMP_PREFIX}*") if builds.is_dir() else ():
            if str(p.resolve()) in _BUILD_OWNERS or not p.is_dir():
                continue
            try:
                with open(p / BUILD_OWNER_FILE, "a+") as f:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running build
            except OSError:
                pass  # no owner file: an older simdex's folder, or half removed
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
            log.info("removed %s, the folder of a build that was killed", p.name)
        return removed

    def discard_build_dir(self, tmp_dir: str | os.PathLike) -> None:
        """Remove an unpublished build folder (a build that failed)."""
        tmp_dir = Path(tmp_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        owner = _BUILD_OWNERS.pop(str(tmp_dir.resolve()), None)
        if owner is not None:
            owner.close()

    def publish_build(self, tmp_dir: str | os.PathLike) -> str:
        """Make the build in `tmp_dir` (from `new_build_dir`) current; return its version.

        The folder is renamed to builds/<version> and CURRENT is swapped atomically, so a
        reader sees either the old build or the new one, never half of one.
        """
        tmp_dir = Path(tmp_dir)
        builds = self.root / BUILDS_DIR
        if tmp_dir.parent.resolve() != builds.resolve() or not tmp_dir.is_dir():
            raise CatalogError(f"{tmp_dir} is not a build folder of {self.root}; get one from new_build_dir()")
        BuildFiles(tmp_dir).write_manifest()
        with self.commit_lock():
            numbers = [int(m.group(1)) for p in builds.iterdir() if (m := _BUILD_RE.match(p.name))]
            version = f"v{max(numbers, default=0) + 1:06d}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
            owner = _BUILD_OWNERS.pop(str(tmp_dir.resolve()), None)
            (tmp_dir / BUILD_OWNER_FILE).unlink(missing_ok=True)
            os.rename(tmp_dir, builds / version)
            if owner is not None:
                owner.close()
            tmp = self.root / f".{CURRENT_FILE}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                tmp.write_text(version + "\n")
                os.replace(tmp, self.root / CURRENT_FILE)
            finally:
                tmp.unlink(missing_ok=True)
        log.info("build %s is now current in %s", version, self.root)
        return version

    @property
    def current_version(self) -> str | None:
        """The current build's version, or None before the first build. CURRENT must hold the
        name of a folder of builds/ (DamagedFileError otherwise: it never leads elsewhere)."""
        path = self.root / CURRENT_FILE
        recovery = (f"write the name of a folder of {self.root / BUILDS_DIR} into it, "
                    f"or {_REBUILD.format(root=self.root)}")
        try:
            v = path.read_bytes().decode("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            raise DamagedFileError(path, "not the name of a build", recovery) from None
        if not v:
            return None
        if not _VERSION_RE.fullmatch(v):
            raise DamagedFileError(path, f"{v[:40]!r} is not the name of a build", recovery)
        if not (self.root / BUILDS_DIR / v).is_dir():
            raise DamagedFileError(path, f"it names build {v}, which is not in {self.root / BUILDS_DIR}", recovery)
        return v

    def current_build_dir(self) -> Path | None:
        """The folder of the current build, or None before the first build."""
        v = self.current_version
        return None if v is None else self.root / BUILDS_DIR / v

    def current_build(self) -> BuildFiles | None:
        """The files of the current build, or None before the first build; what is cheap to
        check (sizes, matrix headers, checksums of small files) is checked against its manifest."""
        folder = self.current_build_dir()
        if folder is None:
            return None
        files = BuildFiles(folder)
        files.verify(full=False, recovery=_REBUILD.format(root=self.root))
        return files

    def change_signature(self) -> tuple:
        """What changes when a build is published or objects are deleted (inode, mtime and size of
        the current pointer and of the tombstones): a long-lived reader compares it to reload."""
        out = []
        for name in (CURRENT_FILE, DELETED_FILE):
            try:
                st = os.stat(self.root / name)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def remove_old_builds(self, keep: int = 2) -> list[str]:
        """Delete all but the newest `keep` builds (never the current one); return their versions."""
        builds = self.root / BUILDS_DIR
        versions = sorted(p.name for p in builds.iterdir() if _BUILD_RE.match(p.name))
        cur = self.current_version
        removed = [v for v in versions[:-keep] if v != cur] if keep > 0 else [v for v in versions if v != cur]
        for v in removed:
            shutil.rmtree(builds / v)
        return removed

    # ------------------------------------------------------------------ tombstones

    # ------------------------------------------------------------------ augmented views

    def views_path(self, job_id: str) -> Path:
        return self.root / VIEWS_DIR / f"{job_id}.parquet"

    def write_views(self, job_id: str, groups: np.ndarray, features: np.ndarray) -> Path:
        """Store the augmented views of a job's sampled images: rows of raw features (n, N) float32,
        `groups` (n,) int64 naming the image each view is of (two or more views per image). Written
        to a temporary name and renamed, so a killed job leaves none or all of them."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.num_features or len(groups) != len(features):
            raise CatalogError(f"views must be (n, {self.num_features}) features with one group each")
        folder = self.root / VIEWS_DIR
        folder.mkdir(exist_ok=True)
        path = self.views_path(job_id)
        tmp = folder / f".{uuid.uuid4().hex}.parquet.tmp"
        flat = pa.array(features.reshape(-1), pa.float32())
        table = pa.table({"group": pa.array(np.asarray(groups, np.int64)),
                          "features": pa.FixedSizeListArray.from_arrays(flat, self.num_features)})
        try:
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def read_views(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every job's views: groups (n,) int64, distinct across jobs, and raw features (n, N) float32;
        None when there are none. DamagedFileError names an unreadable file."""
        folder = self.root / VIEWS_DIR
        paths = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []
        if not paths:
            return None
        groups, feats = [], []
        for k, path in enumerate(paths):
            try:
                table = pq.read_table(path)
                g = table.column("group").to_numpy().astype(np.int64)
                x = np.asarray(table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                               np.float32).reshape(len(g), self.num_features)
            except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
                raise DamagedFileError(path, f"unreadable views ({str(exc).splitlines()[0]})",
                                       "delete it (the views are made again by `simdex index --views`)") from None
            groups.append(g + (k << 40))
            feats.append(x)
        return np.concatenate(groups), np.concatenate(feats)

    def add_deleted(self, ids: Sequence[int] | np.ndarray) -> int:
        """Hide objects `ids` from every result (persisted; survives rebuilds). Returns how
        many ids were newly deleted. Unknown ids raise CatalogError."""
        new = np.unique(as_object_ids(ids, CatalogError))
        if new.size and (new.min() < 0 or new.max() >= self.counters()["object_id"]):
            bad = new[(new < 0) | (new >= self.counters()["object_id"])]
            raise CatalogError(f"no object with id {', '.join(map(str, bad[:5]))} in {self.root}")
        with self.commit_lock():  # read-modify-write: concurrent deletes must not lose each other's ids
            old = self.deleted_ids()
            merged = np.union1d(old, new)
            tmp = self.root / f".{DELETED_FILE}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                pq.write_table(pa.table({"object_id": pa.array(merged, pa.int64())}), tmp)
                os.replace(tmp, self.root / DELETED_FILE)
            finally:
                tmp.unlink(missing_ok=True)
        return int(merged.size - old.size)

    def deleted_ids(self) -> np.ndarray:
        """Sorted int64 array of tombstoned object ids (DamagedFileError when the file is unreadable)."""
        p = self.root / DELETED_FILE
        if not p.is_file():
            return np.empty(0, dtype=np.int64)
        try:
            ids = pq.read_table(p, columns=["object_id"]).column("object_id")
            if not pa.types.is_integer(ids.type) or ids.null_count:
                raise ValueError("object_id must be integers")
            return ids.to_numpy().astype(np.int64)
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            raise DamagedFileError(p, f"unreadable tombstones ({str(exc).splitlines()[0]})",
                                   f"{_RESTORE}; deleting it shows the deleted objects again") from None


# Columns every object shard has, in this order; the source's metadata columns follow `label`.
OBJECT_BASE_SCHEMA = pa.schema([
    ("object_id", pa.int64()),
    ("image_id", pa.int64()),
    ("source", pa.string()),
    ("ordinal", pa.int64()),
    ("component", pa.int32()),
    ("label", pa.string()),
    ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),
    ("area", pa.int64()),
    ("features", pa.list_(pa.float32())),  # fixed_size_list<float32>[N] in a shard
])
RESERVED_COLUMNS = frozenset(OBJECT_BASE_SCHEMA.names)
ERRORS_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("source", pa.string()),
    ("ordinal", pa.int64()),
    ("label", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])
