"""The files of one build: the only module that knows their names.

A build folder (`builds/<version>/`, which `Catalog` places and publishes) holds::

    build.json              what the build is: config, counts, Table III, Ω, candidates, recall, timings
    stats.npz               the streaming statistics (`FeatureStats`), reused by the next build
    stats_shards.json       the shards those statistics cover
    pruning.npz             active flags, v_1, kept features, their mean and std, z range
    codec.npz               the 8-bit codec of z (lo, step) for the exhaustive table scan
    z.npy                   (n, d) float32 z-scores of the kept features, memory-mapped by readers
    l2_map.npz              the l2 row map's μ' and σ' (`engine.row_map`), where some Ω is measured in that space
    z_l2.npy                (n, d) float32 rows of z mapped by it (the same builds only)
    codes.npy               (n, d) uint8 codes of z
    codec4.npz              the 4-bit codec (16 levels per feature, the map from 8-bit codes)
    codes4-NNN.faiss        4-bit codes of 2^19 rows each, as FAISS fast-scan indexes (the exact scan's first pass)
    object_ids.npy          (n,) int64, ascending: the object of each row
    omega.npy               Ω of the build (d,)
    omegas.npz              the class-based Ω a query may pick instead (clusters, welch)
    candidates.json         the candidate index's kind and parameters
    candidates.faiss        the FAISS index (IVF builds only)
    candidates4.faiss       the 4-bit lists of an ivf4 candidate index
    candidates_omega.npy    the Ω the candidate index was weighted with
    manifest.json           size and SHA-256 of every other file, written when the build is published
    .verified.json          which large files were hashed in full, and their stat then (`VerifiedStamps`)

The build writes through `BuildFiles`; the searcher, SQL, evaluation, the demo and the
candidate index read through it. Nobody else joins a file name onto a build folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from simdex.engine import integrity
from simdex.engine.integrity import VERIFIED_FILE, DamagedFileError, VerifiedStamps, check_file, seal, sha256_of, unseal
from simdex.engine.pruning import FeatureStats, Pruning
from simdex.engine.quantized import UniformCodec
from simdex.engine.row_map import UnitLengthMap

_INFO = "build.json"
_STATS, _STATS_SHARDS = "stats.npz", "stats_shards.json"
_PRUNING, _CODEC = "pruning.npz", "codec.npz"
_Z, _CODES, _OBJECT_IDS = "z.npy", "codes.npy", "object_ids.npy"
_Z_L2, _L2_MAP = "z_l2.npy", "l2_map.npz"
_OMEGA, _OMEGAS = "omega.npy", "omegas.npz"
COLUMN_OMEGA_PREFIX = "@"  # omegas.npz names a label column's Ω "@column" (estimators have bare names)
_CANDIDATES_INFO, _CANDIDATES_INDEX, _CANDIDATES_OMEGA = "candidates.json", "candidates.faiss", "candidates_omega.npy"
_CANDIDATES_LISTS = "candidates4.faiss"
_CODEC4, _CODES4 = "codec4.npz", "codes4-{:03d}.faiss"
_MANIFEST = "manifest.json"
_NOT_IN_MANIFEST = (_MANIFEST, ".owner", VERIFIED_FILE)


def column_omega_key(column: str) -> str:
    """Name under which a build stores the Ω of a further label column in omegas.npz."""
    return f"{COLUMN_OMEGA_PREFIX}{column}"


def label_column_omegas(record: dict) -> dict[str, str]:
    """Label columns with an Ω of their own, from a build's Ω record → the key a query names it by:
    the build's estimator for the column it was fitted on, and `column_omega_key` for each further
    column whose Ω could be estimated (`BuildConfig.omega_columns`)."""
    out = {}
    primary = record.get("classes_from")
    if primary and not str(primary).startswith("k-means"):
        out[primary] = record["estimator"]
    for column, r in record.get("columns", {}).items():
        if r.get("estimator"):
            out[column] = column_omega_key(column)
    return out


class BuildFiles:
    """Names, paths, reading and writing of every file in one build folder.

    Example:
        >>> files = BuildFiles(Catalog.open("cat/").current_build_dir())   # doctest: +SKIP
        >>> files.read_info()["kept"], files.z().shape                     # doctest: +SKIP
        (70, (70000, 70))
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def version(self) -> str:
        return self.folder.name

    def __repr__(self) -> str:
        return f"BuildFiles({str(self.folder)!r})"

    # ------------------------------------------------------------------ integrity

    def write_manifest(self) -> None:
        """Record the size and SHA-256 of every file of the build (called once, at publication),
        and stamp the large ones as verified (the hash just read them)."""
        files, stamps = {}, VerifiedStamps(self.folder)
        for p in sorted(self.folder.iterdir()):
            if p.is_file() and p.name not in _NOT_IN_MANIFEST:
                st = p.stat()
                files[p.name] = {"bytes": st.st_size, "sha256": sha256_of(p)}
                if st.st_size > integrity.SMALL_FILE_BYTES:
                    stamps.add(p, files[p.name]["sha256"], st)
        (self.folder / _MANIFEST).write_text(json.dumps(seal({"files": files}), indent=1))
        stamps.save()

    def read_manifest(self, recovery: str = "") -> dict[str, dict] | None:
        """{file name: {bytes, sha256}}, or None for a build published before manifests."""
        path = self.folder / _MANIFEST
        if not path.exists():
            return None
        try:
            manifest = unseal(json.loads(path.read_text()), path, recovery)
        except (OSError, ValueError) as exc:
            raise DamagedFileError(path, f"unreadable ({exc})", recovery) from None
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(r, dict) for r in files.values()):
            raise DamagedFileError(path, "no file list", recovery)
        return files

    def verify(self, full: bool, recovery: str = "") -> list[str]:
        """Check every file against the manifest: sizes, matrix headers and small files' checksums
        always; large files' checksums once per change (a stat when `VerifiedStamps` says the file
        was hashed and has not been written since, a full hash otherwise); every checksum when
        `full`. Raises DamagedFileError naming the first damaged file (`damaged_files` lists them
        all); returns the names checked."""
        names, damaged = self.damaged_files(full, recovery)
        if damaged:
            raise damaged[0]
        return names

    def damaged_files(self, full: bool, recovery: str = "") -> tuple[list[str], list[DamagedFileError]]:
        """Check every file as `verify` does, but go on past a damaged one: (the names checked,
        one DamagedFileError per damaged file, in manifest order). A build without a manifest
        (an older simdex) checks nothing: ([], [])."""
        if not self.folder.is_dir():
            return [], [DamagedFileError(self.folder, "the build folder is missing", recovery)]
        try:
            files = self.read_manifest(recovery)
        except DamagedFileError as exc:
            return [], [exc]
        if files is None:  # an older build: only what its readers check
            return [], []
        damaged, stamps = [], None if full else VerifiedStamps(self.folder)
        for name, record in files.items():
            if "/" in name or name.startswith("."):
                damaged.append(DamagedFileError(self.folder / _MANIFEST, f"names {name!r}, not a file of the build",
                                                recovery))
                continue
            try:
                if stamps is not None and record.get("bytes", 0) > integrity.SMALL_FILE_BYTES:
                    stamps.check(self.folder / name, record, recovery)
                else:
                    check_file(self.folder / name, record, full=full, recovery=recovery)
            except DamagedFileError as exc:
                damaged.append(exc)
        if stamps is not None:
            stamps.save()
        reported = {exc.path.name for exc in damaged}
        damaged += [exc for exc in self._matrix_header_problems(recovery) if exc.path.name not in reported]
        return list(files), damaged

    def _matrix_header_problems(self, recovery: str) -> list[DamagedFileError]:
        """z, codes and object_ids (and z_l2 where the build has it): readable .npy headers of the
        same number of rows."""
        shapes, problems = {}, []
        matrices = [(_Z, np.float32), (_CODES, np.uint8), (_OBJECT_IDS, np.int64)]
        if (self.folder / _L2_MAP).exists() or (self.folder / _Z_L2).exists():
            matrices.append((_Z_L2, np.float32))
        for name, dtype in matrices:
            path = self.folder / name
            try:
                m = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                problems.append(DamagedFileError(path, f"not a readable .npy matrix ({str(exc).splitlines()[0]})",
                                                 recovery))
                continue
            if m.dtype != dtype:
                problems.append(DamagedFileError(path, f"holds {m.dtype}, not {np.dtype(dtype)}", recovery))
                continue
            shapes[name] = m.shape
        if len(shapes) == len(matrices) and (len({shape[0] for shape in shapes.values()}) != 1
                                             or any(shapes[_Z] != shapes[m] for m in (_CODES, _Z_L2) if m in shapes)):
            problems.append(DamagedFileError(self.folder, f"its matrices disagree in shape ({shapes})", recovery))
        return problems

    # ------------------------------------------------------------------ build.json

    def read_info(self) -> dict:
        return json.loads((self.folder / _INFO).read_text())

    def write_info(self, info: dict) -> None:
        (self.folder / _INFO).write_text(json.dumps(info, indent=1))

    # ------------------------------------------------------------------ statistics (reused by the next build)

    def has_stats(self) -> bool:
        return (self.folder / _STATS).is_file()

    def read_stats(self) -> tuple[FeatureStats, list[str]]:
        """The statistics and the shard names they cover (OSError/ValueError/KeyError when unreadable)."""
        shards = json.loads((self.folder / _STATS_SHARDS).read_text())
        return FeatureStats.load(self.folder / _STATS), shards

    def write_stats(self, stats: FeatureStats, shards: list[str]) -> None:
        stats.save(self.folder / _STATS)
        (self.folder / _STATS_SHARDS).write_text(json.dumps(shards))

    # ------------------------------------------------------------------ pruning and the 8-bit codec

    def write_pruning(self, pruning: Pruning) -> None:
        np.savez(self.folder / _PRUNING, active=pruning.active, v1=pruning.v1, kept=pruning.kept, mean=pruning.mean,
                 std=pruning.std, z_min=pruning.z_min, z_max=pruning.z_max,
                 retain=np.float64(pruning.retain), retained=np.float64(pruning.retained),
                 row_norm=np.str_(pruning.row_norm))

    def read_pruning(self) -> Pruning:
        with np.load(self.folder / _PRUNING) as f:
            scalars = {k: float(f[k]) if k in f.files else float("nan") for k in ("retain", "retained")}
            row_norm = str(f["row_norm"]) if "row_norm" in f.files else "none"  # builds before the option
            return Pruning(active=f["active"], v1=f["v1"], kept=f["kept"], mean=f["mean"], std=f["std"],
                           z_min=f["z_min"], z_max=f["z_max"], row_norm=row_norm, **scalars)

    def write_codec(self, codec: UniformCodec) -> None:
        np.savez(self.folder / _CODEC, lo=codec.lo, step=codec.step)

    def read_codec(self) -> UniformCodec:
        with np.load(self.folder / _CODEC) as f:
            return UniformCodec(f["lo"], f["lo"] + f["step"] * 255)

    # ------------------------------------------------------------------ the 4-bit fast-scan codes

    def write_fastscan(self, codec4, chunks) -> None:
        """The 4-bit codec and its fast-scan chunks ((first row, FAISS index), in row order)."""
        import faiss

        np.savez(self.folder / _CODEC4, levels=codec4.levels, map8=codec4.map8)
        for i, (_first_row, index) in enumerate(chunks):  # chunks are in row order: the file number says where
            faiss.write_index(index, str(self.folder / _CODES4.format(i)))

    def read_codec4(self):
        """The 4-bit codec (`FourBitCodec`), or None for a build made before 4-bit codes."""
        from simdex.engine.fastscan import FourBitCodec

        path = self.folder / _CODEC4
        if not path.is_file():
            return None
        with np.load(path) as f:
            return FourBitCodec(f["levels"], f["map8"])

    def read_fastscan(self):
        """(FourBitCodec, [(first row, fast-scan index)]) or None for a build without 4-bit codes:
        the exact scan's chunks, all of them read into memory (226 MB at 1M × 450)."""
        import faiss

        codec4 = self.read_codec4()
        if codec4 is None:
            return None
        chunks, start, i = [], 0, 0
        while (chunk := self.folder / _CODES4.format(i)).is_file():
            index = faiss.read_index(str(chunk))
            chunks.append((start, index))
            start, i = start + int(index.ntotal), i + 1
        return (codec4, chunks) if chunks else None

    # ------------------------------------------------------------------ the row matrices

    def create_matrices(self, n: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Writable memory maps (z (n, d) float32, codes (n, d) uint8, object_ids (n,) int64)."""
        open_memmap = np.lib.format.open_memmap
        return (open_memmap(self.folder / _Z, mode="w+", dtype=np.float32, shape=(n, d)),
                open_memmap(self.folder / _CODES, mode="w+", dtype=np.uint8, shape=(n, d)),
                open_memmap(self.folder / _OBJECT_IDS, mode="w+", dtype=np.int64, shape=(n,)))

    def z(self) -> np.ndarray:
        """(n, d) float32 z-scores, memory-mapped read-only."""
        return np.load(self.folder / _Z, mmap_mode="r")

    def write_l2_space(self, row_map: UnitLengthMap, mapped: np.ndarray) -> None:
        """The l2 row map and the rows of z it maps to (`engine.row_map`; `mapped`: every row, in order)."""
        np.savez(self.folder / _L2_MAP, unit_mean=row_map.unit_mean, unit_std=row_map.unit_std)
        np.save(self.folder / _Z_L2, np.asarray(mapped, np.float32))

    def read_l2_map(self, pruning: Pruning) -> UnitLengthMap | None:
        """The build's l2 row map (for the z-scores of `pruning`), or None where no Ω uses it."""
        path = self.folder / _L2_MAP
        if not path.exists():
            return None
        with np.load(path) as f:
            return UnitLengthMap(pruning.mean, pruning.std, f["unit_mean"], f["unit_std"])

    def z_l2(self) -> np.ndarray:
        """(n, d) float32 rows of z in the l2 space, memory-mapped read-only."""
        return np.load(self.folder / _Z_L2, mmap_mode="r")

    def codes(self) -> np.ndarray:
        """(n, d) uint8 codes of z, memory-mapped read-only."""
        return np.load(self.folder / _CODES, mmap_mode="r")

    def object_ids(self) -> np.ndarray:
        """(n,) int64 object ids of the rows, memory-mapped read-only."""
        return np.load(self.folder / _OBJECT_IDS, mmap_mode="r")

    # ------------------------------------------------------------------ Ω

    def write_omega(self, omega: np.ndarray, others: dict[str, np.ndarray]) -> None:
        """The build's Ω and the class-based ones a query may choose instead."""
        np.save(self.folder / _OMEGA, omega)
        np.savez(self.folder / _OMEGAS, **others)

    def read_omega(self) -> np.ndarray:
        return np.load(self.folder / _OMEGA)

    def read_other_omegas(self) -> dict[str, np.ndarray]:
        path = self.folder / _OMEGAS
        if not path.exists():
            return {}
        with np.load(path) as f:
            return {name: f[name] for name in f.files}

    # ------------------------------------------------------------------ the candidate index

    def write_candidates(self, info: dict, omega: np.ndarray | None = None) -> None:
        """The candidate index's description (and the Ω it is weighted with); the FAISS index
        itself is written by its owner to `candidates_index_path`."""
        if omega is not None:
            np.save(self.folder / _CANDIDATES_OMEGA, omega)
        (self.folder / _CANDIDATES_INFO).write_text(json.dumps(info))

    def read_candidates(self) -> tuple[dict, np.ndarray | None]:
        info = json.loads((self.folder / _CANDIDATES_INFO).read_text())
        path = self.folder / _CANDIDATES_OMEGA
        return info, (np.load(path) if path.exists() else None)

    @property
    def candidates_index_path(self) -> Path:
        return self.folder / _CANDIDATES_INDEX

    @property
    def candidates_lists_path(self) -> Path:
        return self.folder / _CANDIDATES_LISTS
