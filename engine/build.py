"""`simdex build`: pruning, normalisation, Ω and the candidate index of a catalog (DESIGN §4).

Two streaming passes over the shards, memory bounded by one batch plus the N×N Gram:

1. statistics (`engine.pruning.FeatureStats`): active flags, XᵀX, Σx, Σx², min, max.
   The statistics of every shard the current build already covered are stored in
   that build (with the list of shards) and are reused: only shards
   committed since are read in this pass. Shards are append-only, so the old list
   is a prefix of the new one; if it is not (e.g. the catalog was re-created), all
   shards are read again.
2. normalisation: the kept features of every object are z-scored and written as a
   memory-mappable (n, d) float32 matrix with the object ids, plus their 8-bit
   codes for the exhaustive table scan (`engine.build_files` names every file of a
   build); the class statistics for Ω are accumulated from it. This pass always reads every shard: new
   objects change the kept set, the means and the standard deviations.

Both passes run in this process (`LocalPasses`) or, with `engine="ray"`, as parallel Ray tasks
over groups of shards whose statistics the driver merges exactly (`engine.ray_build`).

Then Ω, the candidate index (chosen by catalog size), and the candidate stage's
recall@10 against the exact ranking on sampled queries, all recorded in
the build's info. The build is written into a temporary folder and published by the
catalog's atomic pointer swap; readers holding the previous build keep reading it.

The build before the new one is kept (`keep_builds`, default 2) so that a reader that
opened it keeps working; older builds are removed (a reader's memory maps of a
removed build stay valid on POSIX systems, but it cannot load parts it had not yet
opened).

Rows of tombstoned objects are kept in the build (and in its statistics) and hidden
at query time, so `simdex delete` takes effect at once and survives rebuilds.

Ω's default (`auto`): when the `label` column has two or more classes, learned Ω
(`engine.omega_learned`) is fitted on a seeded sample of the labelled rows and chosen
if it beats eq. 5 (`clusters`) and Welch on held-out labelled queries; otherwise the
best of eq. 5, Welch and uniform on those queries (the reason is recorded in the
build's info). Without labels: `uniform`. Every class-based Ω computed is stored for
`simdex query --omega`. When the objects have a `split` column with a `train`
value, class statistics come from the train rows only, so evaluations on the other
split do not see their own labels through Ω (`omega_split="all"` uses every row).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from simdex.engine.build_files import BuildFiles, column_omega_key
from simdex.engine.candidates import build_candidate_index, resolve_kind
from simdex.engine.catalog import Catalog, CatalogError
from simdex.engine.errors import SimdexError
from simdex.engine.fastscan import FourBitCodec, chunk_indexes
from simdex.engine.omega import ClassStats, OmegaError, OmegaInputs, kmeans_labels, make_omega
from simdex.engine.pruning import ROW_NORMS, FeatureStats, Pruning, PruningError, format_table_iii, row_normalise
from simdex.engine.quantized import UniformCodec
from simdex.engine.row_map import UnitLengthMap
from simdex.engine.searcher import QUANTIZED_SCAN_ABOVE, load_scanner
from simdex.engine.shard_reader import column_values

log = logging.getLogger(__name__)

BUILD_FORMAT = "simdex-build/1"
OMEGA_CHOICES = ("auto", "uniform", "svd", "clusters", "welch", "learned")
OMEGA_ROW_MAPS = ("auto", "none")
# an Ω measured on l2 rows is kept only when its held-out mAP is higher by more than this (a tie keeps
# the stored space: one matrix fewer)
ROW_MAP_MARGIN = 1e-3
DEFAULT_TAU = 1.0  # the paper's width, where τ is not chosen by measurement
# τ tried by `--tau auto` where learned Ω is fitted (labelled objects): the one whose learned Ω ranks
# held-out queries best wins (engine.omega_learned.learn_omega)
TAU_SEARCH = (0.7, 1.0, 1.4)
OMEGA_COLUMNS = ("label", "instance")  # columns given an Ω of their own by default, where the objects have them
ENGINE_CHOICES = ("local", "ray")


class BuildError(SimdexError):
    """A build that cannot be made as asked; the message says what to change."""


@dataclass
class BuildConfig:
    # Σ v1² the kept features carry. 1.0 (every feature with a loading on v1) by measurement: on
    # Fashion-MNIST the paper's 0.99 keeps 70 of 221 active features and costs 0.14 P@10 with
    # learned Ω (benchmarks/results/bench_omega.md)
    retain: float = 1.0
    # each object's raw vector mapped before statistics and z-scores: none (the paper) | l2 (unit length;
    # Fashion-MNIST mAP 0.469 → 0.504 in benchmarks/results/bench_row_norm_fmnist.md)
    row_norm: str = "none"
    omega: str = "auto"  # auto | uniform | svd | clusters | welch | learned
    # auto: where queries scan exactly (the exact candidate index), a label column's Ω is also fitted on
    # unit-length rows (engine.row_map, `l2`) and measured there when that ranks held-out queries better
    # (scenes classes: the cosine's division by the object's length); none: every Ω on the stored z
    omega_row_map: str = "auto"
    clusters_from: str | None = None  # column of classes for clusters/welch (default: label)
    # further columns of classes, each given its own Ω (the `auto` choice on that column's classes) that
    # a query picks by the column's name (`--omega instance`); None: those of OMEGA_COLUMNS the objects
    # have besides clusters_from. A column's Ω answers "similar in this column's sense": the scenes'
    # class Ω ranks items at mAP 0.09, their instance Ω at 0.45 (benchmarks/results/bench_scenes.md)
    omega_columns: tuple[str, ...] | None = None
    n_clusters: int = 10  # k-means clusters when there is no class column
    omega_split: str = "auto"  # auto (train rows if a split column has them) | all | a split value
    # the memberships' default width τ for queries and the recorded recall (queries may choose another);
    # None (`--tau auto`): chosen among TAU_SEARCH with learned Ω where the objects have labels, else
    # DEFAULT_TAU; the build's info records the τ used
    tau: float | None = None
    index: str = "auto"  # auto | exact | ivf | ivf4 (auto: exact below 50,000 objects, else ivf4)
    recall_queries: int = 50
    batch_rows: int = 65536
    seed: int = 0  # k-means, recall queries and the learned Ω's sample and fit
    learned_rows: int = 4000  # labelled rows sampled (seeded) to fit and validate learned Ω
    keep_builds: int = 2  # published builds kept on disk (the current one and the one before it)
    index_options: dict = field(default_factory=dict)
    engine: str = "local"  # local (this process) | ray (both passes as Ray tasks: engine.ray_build)
    address: str | None = None  # engine ray: the cluster to join (None: start a local one)
    workers: int | None = None  # engine ray: tasks in flight (None: the cluster's CPUs)


@dataclass
class BuildResult:
    version: str
    path: Path
    info: dict


def _previous_stats(catalog: Catalog, shards: list[str], row_norm: str = "none") -> tuple[FeatureStats | None, list[str]]:
    """Statistics of the current build when its shards are a prefix of `shards` and its rows were
    mapped by the same `row_norm` (none when the current build is damaged: a new build is how to
    repair it)."""
    try:
        current = catalog.current_build()
    except CatalogError as exc:
        log.warning("not reusing the current build's statistics: %s", exc)
        return None, []
    if current is None or not current.has_stats():
        return None, []
    try:
        stats, covered = current.read_stats()
        same_map = current.read_pruning().row_norm == row_norm
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot reuse the statistics of %s (%s); reading every shard", current.folder, exc)
        return None, []
    if covered != shards[: len(covered)] or stats.num_features != catalog.num_features or not same_map:
        return None, []
    return stats, covered


def _class_column(catalog: Catalog, config: BuildConfig, object_ids: np.ndarray,
                  column: str | None = None) -> tuple[np.ndarray | None, str | None, str]:
    """Class of each row (object dtype, None where unknown) for Ω, the column used and the rows used.
    `column`: one of the further Ω columns (default: clusters_from, else label)."""
    reader = catalog.shards()
    columns = sorted(reader.columns)
    name = column or config.clusters_from or "label"
    if name not in columns:
        if column or config.clusters_from:
            option = "--omega-columns" if column else "--clusters-from"
            raise BuildError(f"{option} {name}: no such column; the objects have {', '.join(columns)}")
        return None, None, "none"
    want = ["object_id", name] + (["split"] if "split" in columns and name != "split" else [])
    table = reader.read(want)
    ids = table.column("object_id").to_numpy()
    values = column_values(table, name)
    rows_used = "all"
    if "split" in want and config.omega_split != "all":
        split = column_values(table, "split")
        chosen = "train" if config.omega_split == "auto" else config.omega_split
        if np.any(split == chosen):
            values = np.where(split == chosen, values, None)
            rows_used = f"split = {chosen}"
        elif config.omega_split != "auto":
            raise BuildError(f"--omega-split {chosen}: no object has split = {chosen}")
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], object_ids)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order][pos] == object_ids
    out = np.full(len(object_ids), None, dtype=object)
    out[found] = values[order][pos[found]]
    if len({v for v in out if v is not None}) < 2:
        return None, name, rows_used
    return out, name, rows_used


def _check_config(config: BuildConfig) -> None:
    if config.omega not in OMEGA_CHOICES:
        raise BuildError(f"unknown omega {config.omega!r}; choose one of {', '.join(OMEGA_CHOICES)}")
    if not 0 < config.retain <= 1:
        raise BuildError(f"retain must be in (0, 1], got {config.retain}")
    if config.omega_row_map not in OMEGA_ROW_MAPS:
        raise BuildError(f"omega_row_map must be one of {', '.join(OMEGA_ROW_MAPS)}, got {config.omega_row_map!r}")
    if config.row_norm not in ROW_NORMS:
        raise BuildError(f"row_norm must be one of {', '.join(ROW_NORMS)}, got {config.row_norm!r}")
    if config.engine not in ENGINE_CHOICES:
        raise BuildError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    if config.engine != "ray" and (config.address is not None or config.workers is not None):
        raise BuildError("address and workers are options of the Ray engine: add engine='ray' (--engine ray)")
    if config.workers is not None and config.workers < 1:
        raise BuildError(f"workers must be at least 1, got {config.workers}")


def _check_columns(catalog: Catalog, config: BuildConfig) -> None:
    """The class columns the options name exist (the same message `_class_column` gives later)."""
    have = sorted(catalog.shards().columns)
    asked = [("--clusters-from", config.clusters_from)] if config.clusters_from else []
    asked += [("--omega-columns", c) for c in config.omega_columns or ()]
    for option, name in asked:
        if name not in have:
            raise BuildError(f"{option} {name}: no such column; the objects have {', '.join(have)}")


def _prune(catalog: Catalog, stats: FeatureStats, config: BuildConfig) -> tuple[Pruning, list[dict]]:
    """The kept features (SVD pruning) and the paper's Table III."""
    try:
        pruning = Pruning.from_stats(stats, config.retain, config.row_norm)
    except PruningError as exc:
        raise BuildError(str(exc)) from None
    table_iii = pruning.table_iii(catalog.phi)
    log.info("Table III\n%s", format_table_iii(table_iii))
    return pruning, table_iii


def build(catalog: Catalog, config: BuildConfig | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> BuildResult:
    """Build and publish a new version of `catalog`'s search structures.

    Args:
        catalog: an open catalog with at least one object.
        config: options (defaults: retain 1.0, Ω auto, τ 1, index by size).
        progress: optional callback (stage, done, total) for a progress bar.

    Returns:
        the published version, its folder and its info (what `BuildFiles.read_info` returns).

    Raises:
        BuildError: empty catalog, bad option, Ω that cannot be estimated.

    Example:
        >>> result = build(Catalog.open("cat/"))   # doctest: +SKIP
        >>> result.info["table_iii"][-1]            # doctest: +SKIP
        {'layer': 'total', 'initial': 1600, 'active': 700, 'kept': 451}
    """
    config = config or BuildConfig()
    config = replace(config, tau=parse_tau(config.tau))
    _check_config(config)
    with _passes(config) as passes:
        return _build(catalog, config, progress or (lambda stage, done, total: None), passes)


def parse_tau(value) -> float | None:
    """τ as the build takes it (BuildConfig.tau, `simdex build --tau`): None for None or "auto" (the
    build chooses), else a positive finite number, given as one or as its text. BuildError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        tau = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        tau = None
    if tau is None or not 0 < tau < float("inf"):
        raise BuildError(f"tau must be 'auto' or a positive number, got {value!r}")
    return tau


def _build(catalog: Catalog, config: BuildConfig, report: Callable[[str, int, int], None], passes) -> BuildResult:
    started = time.perf_counter()
    shards = [p.name for p in catalog.shard_paths()]
    if catalog.num_objects == 0:
        raise BuildError(f"catalog {catalog.root} has no objects; index images first with `simdex index`")
    timings = {}
    _check_columns(catalog, config)  # before the passes: at 10M objects they take a quarter of an hour
    stats, reused = _statistics(catalog, shards, report, passes, config.row_norm)
    pruning, table_iii = _prune(catalog, stats, config)
    timings["statistics"] = time.perf_counter() - started

    files = BuildFiles(catalog.new_build_dir())
    try:
        codec = _new_build_files(files, stats, shards, pruning)
        Z, object_ids = _normalise(catalog, files, pruning, codec, report, passes)
        timings["normalise"] = time.perf_counter() - started - timings["statistics"]
        t0 = time.perf_counter()
        codec4 = _write_fastscan(files, codec)
        timings["codes4"] = time.perf_counter() - t0

        omega, omega_record = _estimate_omega(catalog, files, Z, object_ids, pruning, config, report)
        config = replace(config, tau=omega_record["tau"])  # `--tau auto`: the τ the Ω step chose
        t0 = time.perf_counter()
        index = build_candidate_index(Z, omega, config.index, codes8=files.codes(), codec4=codec4,
                                      **config.index_options)
        index.save(files)
        timings["candidate_index"] = time.perf_counter() - t0
        recall = _measure_build_recall(catalog, files, Z, object_ids, omega, index, codec, config)
        timings["total"] = time.perf_counter() - started

        info = {
            "format": BUILD_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {k: v for k, v in asdict(config).items() if k != "index_options"},
            "objects": catalog.num_objects, "num_features": catalog.num_features, "active": int(pruning.active.sum()),
            "kept": len(pruning.kept), "retained": pruning.retained, "row_norm": pruning.row_norm, "table_iii": table_iii, "omega": omega_record,
            "candidates": index.info(), "recall": recall, "shards": shards, "shards_reused_for_statistics": reused,
            "model_sha256": catalog.model_sha256, "timings_s": timings, "engine": passes.info(),
        }
        files.write_info(info)
        version = catalog.publish_build(files.folder)
    except BaseException as exc:  # killed (Ctrl-C), failed or out of space: no half build is left behind
        catalog.discard_build_dir(files.folder)
        if isinstance(exc, OSError):
            raise BuildError(f"cannot write the build in {catalog.root}: {exc.strerror or exc}; "
                             f"nothing was published (free space and run `simdex build` again)") from None
        raise
    removed = catalog.remove_old_builds(keep=max(1, config.keep_builds))
    if removed:
        log.info("removed old builds %s", ", ".join(removed))
    return BuildResult(version, catalog.current_build_dir(), info)


class LocalPasses:
    """The build's two streaming passes in this process, batch by batch (`engine.ray_build.RayPasses`
    runs the same two methods as Ray tasks)."""

    def __init__(self, batch_rows: int):
        self.batch_rows = batch_rows

    def __enter__(self) -> LocalPasses:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def info(self) -> dict:
        return {"name": "local"}

    def feature_stats(self, reader, row_norm: str = "none") -> Iterator[FeatureStats]:
        """Statistics of `reader`'s rows mapped by `row_norm`, one FeatureStats per batch, in row order."""
        for _, x in reader.iter_features(self.batch_rows):
            part = FeatureStats(reader.num_features)
            part.update(row_normalise(x, row_norm))
            yield part

    def normalised(self, reader, pruning: Pruning, codec: UniformCodec) -> Iterator[tuple]:
        """(object ids (n,), z float32 (n, d), 8-bit codes (n, d)) batch by batch, in row order."""
        for ids, x in reader.iter_features(self.batch_rows):
            z = pruning.normalise(x)
            yield ids, z, codec.encode(z)


def _passes(config: BuildConfig):
    if config.engine == "ray":
        from simdex.engine.ray_build import RayPasses

        return RayPasses(config.address, config.workers, config.batch_rows)
    return LocalPasses(config.batch_rows)


def _statistics(catalog: Catalog, shards: list[str], report, passes, row_norm: str = "none") -> tuple[FeatureStats, int]:
    """Pass 1: FeatureStats over every object (rows mapped by `row_norm`), reusing those of the shards
    the current build covered. Returns the statistics and how many shards were reused."""
    n_objects = catalog.num_objects
    stats, covered = _previous_stats(catalog, shards, row_norm)
    stats = stats or FeatureStats(catalog.num_features)  # loaded or new: ours to add to in place
    for part in passes.feature_stats(catalog.shards(first=len(covered)), row_norm):
        stats.absorb(part)  # float64 sums: the same additions as one running total
        report("statistics", stats.count, n_objects)
    if stats.count != n_objects:
        raise CatalogError(f"statistics cover {stats.count} objects, the catalog has {n_objects}: "
                           "was the catalog modified during the build?")
    return stats, len(covered)


def _new_build_files(files: BuildFiles, stats: FeatureStats, shards: list[str], pruning: Pruning) -> UniformCodec:
    """Write the statistics, the pruning and the 8-bit codec of z into the new build folder."""
    files.write_stats(stats, shards)
    files.write_pruning(pruning)
    codec = UniformCodec(pruning.z_min, pruning.z_max)
    files.write_codec(codec)
    return codec


def _normalise(catalog: Catalog, files: BuildFiles, pruning: Pruning, codec: UniformCodec, report,
               passes) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: z-scores of the kept features, their 8-bit codes and their ids, written to the build.
    Returns Z (memory-mapped) and the object ids."""
    n_objects = catalog.num_objects
    z_out, codes_out, ids_out = files.create_matrices(n_objects, len(pruning.kept))
    row = 0
    for ids, z, codes in passes.normalised(catalog.shards(), pruning, codec):
        z_out[row : row + len(ids)] = z
        codes_out[row : row + len(ids)] = codes
        ids_out[row : row + len(ids)] = ids
        row += len(ids)
        report("normalise", row, n_objects)
    z_out.flush(), codes_out.flush(), ids_out.flush()
    del z_out, codes_out, ids_out
    object_ids = np.array(files.object_ids())
    if np.any(np.diff(object_ids) <= 0):
        raise CatalogError("object ids in the shards are not strictly increasing; the catalog is inconsistent")
    return files.z(), object_ids


def _estimate_omega(catalog: Catalog, files: BuildFiles, Z: np.ndarray, object_ids: np.ndarray, pruning: Pruning,
                    config: BuildConfig, report: Callable[[str, int, int], None]) -> tuple[np.ndarray, dict]:
    """Ω of the build (and the other class-based Ω a query may pick), written to the build.
    Returns Ω and its record for the build's info, which holds the τ the build uses ("tau": the given
    one, or under `--tau auto` the one chosen with learned Ω, else DEFAULT_TAU).

    Every Ω is one of weights for the memberships g = exp(−((z − z_q)/τ)²), so the width and the
    weights are fitted together: on Fashion-MNIST learned Ω at τ 0.7 ranked 1,000 test queries at
    P@10 0.810 / mAP 0.496 against 0.806 / 0.493 at τ 1 and 0.807 / 0.489 at τ 1.4, and at τ 0.5 its
    fit did not leave uniform Ω (0.799 / 0.448); the held-out queries ranked them in the same order
    (benchmarks/results/tau_fmnist70k.md)."""
    search_tau = config.tau is None
    config = replace(config, tau=DEFAULT_TAU if search_tau else config.tau)
    space = L2Space(Z, pruning, enabled=config.omega_row_map == "auto" and config.row_norm == "none"
                    and resolve_kind(config.index, len(Z)) == "exact", batch_rows=config.batch_rows)
    omega, record = _estimate_omega_at(catalog, files, Z, object_ids, pruning, config, search_tau, report, space)
    if space.used:
        files.write_l2_space(space.map, space.matrix)  # the rows the fits mapped, not mapped again
    tried = (record.get("learned") or {}).get("tau_search")
    if tried:
        figures = ", ".join(f"{t} {v['map']:.4f}" for t, v in tried.items())
        record["tau"] = record["learned"]["tau"]
        record["tau_choice"] = f"auto: the best held-out mAP of learned Ω (τ {figures})"
    elif search_tau:
        record["tau"] = DEFAULT_TAU
        record["tau_choice"] = (f"auto: {DEFAULT_TAU:g}, the paper's (τ is chosen where learned Ω is fitted: "
                                f"--omega auto or learned, with labelled objects)")
    else:
        record["tau"], record["tau_choice"] = config.tau, "given"
    return omega, record


def _estimate_omega_at(catalog: Catalog, files: BuildFiles, Z: np.ndarray, object_ids: np.ndarray, pruning: Pruning,
                       config: BuildConfig, search_tau: bool,
                       report: Callable[[str, int, int], None], space: L2Space) -> tuple[np.ndarray, dict]:
    """`_estimate_omega` at config.tau, or with τ searched by the labelled learned Ω (`search_tau`), then the
    further columns' Ω at the chosen τ; each labelled column's Ω is also tried on l2 rows (`space`,
    `_in_better_space`). Each fit of learned Ω reports its steps as the stage `learned Ω (COLUMN)`."""
    d = len(pruning.kept)
    omega_name = config.omega
    classes, class_column, rows_used = (None, None, "none")
    if omega_name in ("auto", "clusters", "welch", "learned"):
        classes, class_column, rows_used = _class_column(catalog, config, object_ids)
    labelled = classes is not None
    if not labelled and omega_name in ("auto", "learned"):
        from_views = _views_omega(catalog, pruning, config, report)
        if from_views is not None:
            omega, record = from_views
            files.write_omega(omega, {"learned": omega} if record["estimator"] == "learned" else {})
            return omega, record
    if omega_name == "learned" and not labelled:
        raise BuildError("omega 'learned' needs a column of classes with 2 or more values (--clusters-from) "
                         "or augmented views (`simdex index --views N`); without either use --omega clusters "
                         "(k-means) or uniform")
    if omega_name == "auto" and not labelled:
        omega_name = "uniform"
    class_stats = None
    if omega_name in ("auto", "clusters", "welch", "learned"):
        if classes is None:
            if omega_name == "welch":
                raise BuildError("omega 'welch' needs a column of classes with 2 or more values (--clusters-from)")
            classes = kmeans_labels(Z, config.n_clusters, seed=config.seed).astype(object)
            class_column, rows_used = f"k-means ({config.n_clusters} clusters)", "all"
        class_stats = _class_stats(Z, classes, config.batch_rows)
    omega_inputs = OmegaInputs(dim=d, v1=pruning.v1_kept, class_stats=class_stats, tau=config.tau, seed=config.seed)
    record: dict = {"estimator": omega_name, "classes_from": class_column, "rows": rows_used}
    stored = _class_omegas(omega_inputs, labelled=labelled)
    if labelled and omega_name in ("auto", "learned"):
        try:
            fit = _learn_omega(Z, classes, class_stats, config, TAU_SEARCH if search_tau else None,
                               progress=_stage(report, class_column))
        except OmegaError as exc:
            if omega_name == "learned":
                raise BuildError(str(exc)) from None
            fit = None
            omega_name, record["choice"] = "clusters", f"eq. 5 (clusters): learned Ω could not be fitted ({exc})"
        if fit is not None:
            stored["learned"] = fit.omega.astype(np.float32)
            record["learned"] = fit.record
            config = replace(config, tau=fit.tau)  # the further columns' Ω are fitted for the chosen τ
            if omega_name == "auto":
                omega_name, record["choice"] = _auto_choice(fit.validation)
            mapped = _in_better_space(space, classes, config, class_column, omega_name,
                                      fit.validation[omega_name]["map"], record, report, auto=config.omega == "auto")
            if mapped is not None:
                omega_name, mapped_omega = mapped
                stored[omega_name] = mapped_omega  # the build's own Ω, in its space (the others: stored z)
    record["estimator"] = omega_name
    if omega_name in stored:
        omega = stored.pop(omega_name)
    else:
        try:
            omega = make_omega(omega_name).estimate(omega_inputs).astype(np.float32)
        except OmegaError as exc:
            raise BuildError(str(exc)) from None
    columns = _further_omega_columns(catalog, config, class_column if labelled else None)
    if columns:
        record["columns"] = {}
    for column in columns:
        column_omega, column_record = _column_omega(catalog, Z, object_ids, config, column, report, space)
        record["columns"][column] = column_record
        if column_omega is not None:
            stored[column_omega_key(column)] = column_omega
    files.write_omega(omega, stored)
    return omega, record


def _class_stats(Z: np.ndarray, classes: np.ndarray, batch_rows: int) -> ClassStats:
    """Per-class sums of z (one pass over the build matrix, batch by batch)."""
    stats = ClassStats(Z.shape[1])
    for a in range(0, len(Z), batch_rows):
        stats.update(np.asarray(Z[a : a + batch_rows]), classes[a : a + batch_rows])
    return stats


def _views_omega(catalog: Catalog, pruning: Pruning, config: BuildConfig,
                 report: Callable[[str, int, int], None]) -> tuple[np.ndarray, dict] | None:
    """Self-supervised Ω from the catalog's augmented views (`indexer.views`): learned Ω with each
    image's views as a class, kept when it beats uniform Ω on held-out images' views, else uniform.
    None when the catalog has no views."""
    from simdex.engine.omega_learned import LearnedOmegaConfig, learn_omega

    try:
        views = catalog.read_views()
    except CatalogError as exc:
        raise BuildError(str(exc)) from None
    if views is None:
        return None
    groups, x = views
    z = pruning.normalise(x)
    d = z.shape[1]
    uniform = np.full(d, 1.0 / d, np.float32)
    images = len(np.unique(groups))
    record: dict = {"estimator": "uniform", "classes_from": None, "rows": "none",
                    "views": {"views": int(len(groups)), "images": int(images)}}
    try:
        fit = learn_omega(z, groups.astype(object), config.tau,
                          LearnedOmegaConfig(sample_rows=config.learned_rows, seed=config.seed),
                          progress=_stage(report, "views"))
    except OmegaError as exc:
        record["choice"] = f"uniform: learned Ω could not be fitted on the views ({exc})"
        return uniform, record
    record["learned"] = fit.record
    learned, base = fit.validation["learned"]["map"], fit.validation["uniform"]["map"]
    figures = f"held-out views' mAP: learned {learned:.4f}, uniform {base:.4f}"
    if learned > base + 1e-3:  # a tie (a strong pull toward uniform) is no reason to leave uniform Ω
        record.update(estimator="learned", choice=f"learned from {len(groups):,} augmented views of {images:,} "
                                                   f"images (no labels; {figures})")
        log.info("Ω: %s", record["choice"])
        return fit.omega.astype(np.float32), record
    record["choice"] = f"uniform: learned from views does not beat it ({figures})"
    return uniform, record


def _further_omega_columns(catalog: Catalog, config: BuildConfig, primary: str | None) -> list[str]:
    """The further columns to fit an Ω for: as configured, or those of OMEGA_COLUMNS the objects have."""
    if config.omega_columns is not None:
        return [c for c in dict.fromkeys(config.omega_columns) if c != primary]
    have = set(catalog.shards().columns)
    return [c for c in OMEGA_COLUMNS if c in have and c != primary]


def _column_omega(catalog: Catalog, Z: np.ndarray, object_ids: np.ndarray, config: BuildConfig,
                  column: str, report: Callable[[str, int, int], None],
                  space: L2Space | None = None) -> tuple[np.ndarray | None, dict]:
    """Ω for the classes of a further column, chosen as `--omega auto` chooses (learned if it beats eq. 5
    and Welch on held-out rows of that column, else the best of those; on l2 rows where that ranks
    better, `_in_better_space`); None where the column has fewer than 2 classes (recorded)."""
    classes, _, rows_used = _class_column(catalog, config, object_ids, column=column)
    if classes is None:
        return None, {"estimator": None, "rows": rows_used, "choice": f"no Ω: {column} has fewer than 2 classes"}
    d = Z.shape[1]
    class_stats = _class_stats(Z, classes, config.batch_rows)
    candidates = _class_omegas(OmegaInputs(dim=d, class_stats=class_stats, tau=config.tau, seed=config.seed),
                               labelled=True)
    record: dict = {"rows": rows_used}
    try:
        fit = _learn_omega(Z, classes, class_stats, config, progress=_stage(report, column))
    except OmegaError as exc:
        name = "clusters" if "clusters" in candidates else None
        record.update(estimator=name, choice=f"eq. 5 (clusters): learned Ω could not be fitted ({exc})")
        return (candidates.get(name) if name else None), record
    candidates["learned"] = fit.omega.astype(np.float32)
    name, record["choice"] = _auto_choice(fit.validation)
    record.update(estimator=name, learned=fit.record)
    if name not in candidates:  # uniform
        candidates[name] = np.full(d, 1.0 / d, np.float32)
    log.info("Ω for %s: %s", column, record["choice"])
    mapped = None if space is None else _in_better_space(space, classes, config, column, name,
                                                           fit.validation[name]["map"], record, report)
    if mapped is not None:
        record["estimator"] = mapped[0]
        return mapped[1], record
    return candidates[name], record


class L2Space:
    """The l2 row space of a build (`engine.row_map`), derived from its z on first use: the map and the
    mapped matrix held in memory (only builds with the exact index try it: under 50,000 objects).
    `used` says whether some Ω chose it, so the build writes it."""

    def __init__(self, Z: np.ndarray, pruning: Pruning, enabled: bool, batch_rows: int = 65536):
        self.Z, self.pruning, self.enabled, self.batch_rows = Z, pruning, enabled, batch_rows
        self.used = False
        self._map: UnitLengthMap | None = None
        self._matrix: np.ndarray | None = None

    @property
    def map(self) -> UnitLengthMap:
        if self._map is None:
            self._map = UnitLengthMap.fit(self.Z, self.pruning.mean, self.pruning.std, self.batch_rows)
        return self._map

    @property
    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = np.empty(self.Z.shape, np.float32)
            self.map.write(self.Z, self._matrix, self.batch_rows)
        return self._matrix


def _in_better_space(space: L2Space, classes: np.ndarray, config: BuildConfig, column: str, estimator: str,
                     held_out_map: float, record: dict, report: Callable[[str, int, int], None],
                     auto: bool = True) -> tuple[str, np.ndarray] | None:
    """The column's Ω fitted and chosen again on l2 rows, on the same held-out queries (learned Ω's seeded
    sample depends on the labels only): (estimator, Ω) when its held-out mAP beats `held_out_map` (that
    of `estimator` on the stored z) by more than ROW_MAP_MARGIN, else None. The comparison is recorded
    in `record` (row_map, row_map_choice, learned_l2); `auto`: choose among learned, eq. 5, Welch and
    uniform as `--omega auto` does, else learned (`--omega learned`)."""
    if not space.enabled:
        return None
    Z = space.matrix
    class_stats = _class_stats(Z, classes, config.batch_rows)
    try:
        fit = _learn_omega(Z, classes, class_stats, config, progress=_stage(report, f"{column}, l2 rows"))
    except OmegaError as exc:
        record.update(row_map="none", row_map_choice=f"none: learned Ω could not be fitted on l2 rows ({exc})")
        return None
    name = _auto_choice(fit.validation)[0] if auto else "learned"
    mapped_map = fit.validation[name]["map"]
    figures = f"held-out mAP {held_out_map:.4f} on the stored z ({estimator}), {mapped_map:.4f} on l2 rows ({name})"
    record["learned_l2"] = fit.record
    if mapped_map <= held_out_map + ROW_MAP_MARGIN:
        record.update(row_map="none", row_map_choice=f"none: {figures}")
        return None
    record.update(row_map="l2", row_map_choice=f"l2: {figures}")
    log.info("Ω for %s on l2 rows: %s", column, figures)
    space.used = True
    d = Z.shape[1]
    candidates = _class_omegas(OmegaInputs(dim=d, class_stats=class_stats, tau=config.tau, seed=config.seed),
                               labelled=True)
    candidates["learned"] = fit.omega.astype(np.float32)
    return name, candidates.get(name, np.full(d, 1.0 / d, np.float32))  # uniform: none of the class-based


def _stage(report: Callable[[str, int, int], None], column: str | None) -> Callable[[int, int], None]:
    """learn_omega's (done, total) as the build's progress stage `learned Ω (COLUMN)`."""
    return lambda done, total: report(f"learned Ω ({column})", done, total)


def _learn_omega(Z: np.ndarray, classes: np.ndarray, class_stats: ClassStats, config: BuildConfig,
                 taus: tuple[float, ...] | None = None, progress: Callable[[int, int], None] | None = None):
    """Learned Ω on a seeded sample of the labelled rows; eq. 5 and Welch are validated on the same
    held-out queries, estimated from class statistics without those queries' rows."""
    from simdex.engine.omega_learned import LearnedOmegaConfig, closed_form_references, learn_omega

    return learn_omega(Z, classes, config.tau, LearnedOmegaConfig(sample_rows=config.learned_rows, seed=config.seed),
                       reference=closed_form_references(Z, classes, class_stats), taus=taus, progress=progress)


def _auto_choice(validation: dict[str, dict]) -> tuple[str, str]:
    """`--omega auto` with labels: learned when its held-out mAP beats eq. 5's and Welch's, else the
    best of eq. 5, Welch and uniform. Returns the estimator and the reason recorded in the build."""
    figures = ", ".join(f"{k} {v['map']:.4f}" for k, v in validation.items())
    rivals = {k: validation[k]["map"] for k in ("clusters", "welch") if k in validation}
    if all(validation["learned"]["map"] > m for m in rivals.values()):
        return "learned", f"learned: best held-out mAP ({figures})"
    best = max((k for k in ("clusters", "welch", "uniform") if k in validation), key=lambda k: validation[k]["map"])
    return best, f"{best}: learned does not beat eq. 5 and Welch on held-out mAP ({figures})"


def _write_fastscan(files: BuildFiles, codec: UniformCodec) -> FourBitCodec:
    """The 4-bit codes of the exhaustive scan's first pass (and of ivf4's lists), derived from the 8-bit ones."""
    codes8 = files.codes()
    codec4 = FourBitCodec.fit(codes8, codec)
    files.write_fastscan(codec4, chunk_indexes(codes8, codec4))
    return codec4


def _measure_build_recall(catalog: Catalog, files: BuildFiles, Z, object_ids, omega, index, codec,
                          config: BuildConfig) -> dict:
    """The candidate stage's recall@10 against the scan `--exact` itself uses: 4-bit fast-scan
    then float32 above QUANTIZED_SCAN_ABOVE objects."""
    scanner = None
    if index.kind != "exact" and config.recall_queries > 0 and len(object_ids) > QUANTIZED_SCAN_ABOVE:
        scanner = load_scanner(files, threads=min(4, os.cpu_count() or 1))
    return measure_recall(Z, object_ids, omega, index, catalog.deleted_ids(), config, scanner=scanner, codec=codec)


def _class_omegas(inputs: OmegaInputs, labelled: bool) -> dict[str, np.ndarray]:
    """The class-based Ω a query may pick instead of the build's (`simdex query --omega`): eq. 5
    (`clusters`, from labels or k-means clusters) and, from real labels only, `welch` (as
    `simdex build --omega welch` demands); `learned` is added by the build when it was fitted.
    uniform and svd need no classes: `Searcher` derives them."""
    if inputs.class_stats is None:
        return {}
    names = ("clusters", "welch") if labelled else ("clusters",)
    out = {}
    for name in names:
        try:
            out[name] = make_omega(name).estimate(inputs).astype(np.float32)
        except OmegaError as exc:  # fewer than 2 classes
            log.info("no %s Ω in this build: %s", name, exc)
    return out


def measure_recall(Z, object_ids, omega, index, deleted, config: BuildConfig, scanner=None, codec=None) -> dict:
    """recall@10 of the candidate stage against the exact ranking on sampled catalog objects.

    The exact top-10 comes from the scan `--exact` uses: above QUANTIZED_SCAN_ABOVE objects
    the 4-bit fast-scan with float32 rescoring (benchmarks/bench_query.py measures its recall
    against the float32 scan; the float32 scan was half of a 1M-object build), else the
    float32 scan.
    """
    from simdex.engine.candidates import ExactIndex
    from simdex.engine.membership import make_membership
    from simdex.engine.scoring import exact_search
    from simdex.engine.search import quantized_exhaustive_search, search

    if isinstance(index, ExactIndex):
        return {"recall_at_10_mean": 1.0, "recall_at_10_min": 1.0, "queries": 0,
                "note": "exact index: every query scans the whole catalog"}
    allow = ~np.isin(object_ids, deleted)
    rows = np.flatnonzero(allow)
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(rows, min(config.recall_queries, len(rows)), replace=False))
    if len(sample) == 0:
        return {"recall_at_10_mean": None, "recall_at_10_min": None, "queries": 0,
                "note": "not measured (no query objects)"}
    memberships = [make_membership("gaussian", np.asarray(Z[r]), config.tau) for r in sample]
    if scanner is not None and codec is not None:
        _, truth = quantized_exhaustive_search(Z, scanner, codec, memberships, omega, 10, allow)
    else:
        _, truth = exact_search(Z, memberships, omega, 10, allow=allow)
    recalls, latencies = [], []
    for q, m in enumerate(memberships):
        t = time.perf_counter()
        _, hits = search(Z, [m], omega, 10, index=index, allow=allow)
        latencies.append(time.perf_counter() - t)
        want = set(truth[q][truth[q] >= 0])
        recalls.append(len(want & set(hits[0])) / max(1, len(want)))
    return {"recall_at_10_mean": float(np.mean(recalls)), "recall_at_10_min": float(np.min(recalls)),
            "queries": len(sample), "tau": config.tau, "p50_ms": 1000 * float(np.median(latencies))}


def _column_lines(record: dict) -> list[str]:
    return [f"Ω for {column} (`simdex query --omega {column}`): {r['choice']}"
            + (f"; rows: {r['row_map_choice']}" if r.get("row_map_choice") else "")
            for column, r in record.get("columns", {}).items()]


def _learned_lines(record: dict) -> list[str]:
    lines = []
    fit = record.get("learned")
    if fit:
        val = ", ".join(f"{k} {v['map']:.4f}" for k, v in fit["validation"].items())
        start = f" from {fit['start']}" if fit.get("start", "uniform") != "uniform" else ""
        lines.append(f"learned Ω: τ = {fit['tau']:g}, λ = {fit['strength']:g}{start} (seed {fit['seed']}, {fit['fit_rows']} fit rows, "
                     f"{fit['seconds']:.1f} s); held-out mAP over {fit['validation_queries']} queries: {val}")
    if record.get("choice"):
        lines.append(f"Ω chosen: {record['choice']}")
    if record.get("row_map_choice"):
        lines.append(f"Ω's rows: {record['row_map_choice']}")
    return lines


def _engine_note(engine: dict | None) -> str:
    if not engine or engine.get("name") != "ray":
        return ""
    tasks = engine["tasks"]
    return f" on Ray ({engine['workers']} workers, {tasks['statistics']} + {tasks['normalise']} tasks)"


def format_build_summary(info: dict, version: str) -> str:
    """What `simdex build` prints: Table III, Ω and the candidate stage."""
    r = info["recall"]
    lines = [
        f"build {version}: {info['objects']:,} objects, {info['num_features']} features, "
        f"{info['active']} active, {info['kept']} kept (Σ v1² = {info['retained']:.4f})"
        + (f", rows mapped by {info['row_norm']} before z-scoring" if info.get("row_norm", "none") != "none" else ""),
        "", "Table III", format_table_iii(info["table_iii"]), "",
        f"Ω: {info['omega']['estimator']}" + (f" from {info['omega']['classes_from']} ({info['omega']['rows']})"
                                             if info["omega"]["classes_from"] else ""),
        *_learned_lines(info["omega"]),
        *_column_lines(info["omega"]),
        *([f"τ: {info['config']['tau']:g} ({info['omega']['tau_choice']})"] if "tau_choice" in info["omega"] else []),
        f"candidates: {json.dumps(info['candidates'])}",
        f"recall@10 vs exact: {r['note']}" if r["recall_at_10_mean"] is None else
        f"recall@10 vs exact: mean {r['recall_at_10_mean']:.3f}, worst {r['recall_at_10_min']:.2f} "
        f"over {r['queries']} sampled queries",
        f"time: {info['timings_s']['total']:.1f} s{_engine_note(info.get('engine'))} (statistics reused for {info['shards_reused_for_statistics']} "
        f"of {len(info['shards'])} shards)",
    ]
    return "\n".join(lines)
