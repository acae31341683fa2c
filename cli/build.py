"""`simdex build`: parse, call `simdex.engine.build.build`, print Table III and the candidate stage's recall."""

from __future__ import annotations

from pathlib import Path

import click

from simdex.engine.build import (
    ENGINE_CHOICES,
    OMEGA_CHOICES,
    OMEGA_ROW_MAPS,
    ROW_NORMS,
    BuildConfig,
    BuildError,
    parse_tau,
)
from simdex.engine.candidates import CANDIDATE_KINDS


def _tau_option(ctx, param, value: str) -> float | None:
    """`--tau auto` → None (the build chooses), else a positive number (engine.build.parse_tau)."""
    try:
        return parse_tau(value)
    except BuildError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(name="build")
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder (made by `simdex index`).")
@click.option("--retain", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="Keep the fewest features whose squared loadings on v1 sum to at least this (the paper: "
                   "0.99; 1.0 keeps every feature with a loading, the better ranking on Fashion-MNIST).")
@click.option("--row-norm", type=click.Choice(ROW_NORMS), default="none", show_default=True,
              help="Map each object's raw vector before the statistics and z-scores: none (the paper) or l2 (unit "
                   "length, so an object's contrast and size stop counting as what it is: Fashion-MNIST mAP "
                   "0.469 → 0.504 in benchmarks/results/bench_row_norm_fmnist.md). Queries, SQL and "
                   "explanations apply the build's map.")
@click.option("--omega", type=click.Choice(OMEGA_CHOICES), default="auto", show_default=True,
              help="Feature weights: eq. 5 from classes (clusters), Welch t between classes, learned (fitted "
                   "for retrieval on the labels from uniform and from eq. 5 and Welch, start and λ chosen on "
                   "held-out queries), v1² (svd), uniform; auto = "
                   "learned when labels exist and it beats eq. 5 and Welch on held-out queries (else the best "
                   "of those), uniform without labels.")
@click.option("--omega-row-map", type=click.Choice(OMEGA_ROW_MAPS), default="auto", show_default=True,
              help="auto: each label column's Ω is also fitted on unit-length rows (each object's kept features "
                   "over their length, z-scored again: what the cosine divides by) and measured there when that "
                   "ranks held-out queries better; only with the exact candidate index (under 50,000 objects), "
                   "where such an Ω is scored by a scan of its own matrix. On the scenes it is chosen for classes "
                   "and not for items. none: every Ω on the stored z-scores.")
@click.option("--clusters-from", default=None, metavar="COLUMN",
              help="Column of classes for --omega clusters/welch/learned.  [default: label; k-means when absent]")
@click.option("--omega-columns", default=None, metavar="COLUMN[,COLUMN…]|none",
              help="Further columns of classes, each given its own Ω (chosen as --omega auto chooses, on that "
                   "column's classes) that a query picks by the column's name: `simdex query --omega instance` "
                   "ranks the same item first, `--omega label` the same class.  [default: label and instance, "
                   "where the objects have them; none: only the build's Ω]")
@click.option("--n-clusters", type=click.IntRange(min=2), default=10, show_default=True,
              help="k-means clusters for --omega clusters when the objects have no classes.")
@click.option("--omega-split", default="auto", show_default=True,
              help="Rows whose classes estimate Ω: auto (the train split when a split column has one), "
                   "all, or a split value.")
@click.option("--tau", default="auto", show_default=True, metavar="auto|TAU", callback=_tau_option,
              help="Default width τ of the memberships (in standard deviations) for queries and the recall check. "
                   "auto: with labelled objects, learned Ω is fitted at τ = 0.7, 1 and 1.4 and the τ that "
                   "ranks held-out queries best is kept (Fashion-MNIST: 0.7); without labels 1 (the paper's).")
@click.option("--index", "index_kind", type=click.Choice(CANDIDATE_KINDS), default="auto", show_default=True,
              help="Candidate index: exact (scan everything); ivf (PCA + IVF over clipped √ω·z, 1,000 candidates "
                   "reranked); ivf4 (ivf's lists holding 4-bit codes, every probed row scored by P's tables, "
                   "100 reranked); auto: exact below 50,000 objects, else ivf4.")
@click.option("--recall-queries", type=click.IntRange(min=1), default=50, show_default=True,
              help="Sampled objects on which the candidate stage's recall@10 is measured.")
@click.option("--learned-rows", type=click.IntRange(min=8), default=4000, show_default=True,
              help="Labelled objects sampled (seeded by --seed) to fit and validate learned Ω.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of k-means, the recall queries and learned Ω's sample and fit.")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="local", show_default=True,
              help="local: this process; ray: the statistics and normalisation passes as parallel Ray tasks "
                   "over shards, merged exactly (pip install 'simdex[ray]'; on a multi-node cluster the "
                   "catalog must be on a filesystem every node mounts). The build is the same.")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="With --engine ray: the cluster to join (`auto`: the one `ray start` runs here).  "
                   "[default: start a local Ray cluster for this build]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="With --engine ray: tasks in flight.  [default: the cluster's CPUs]")
@click.option("--quiet", "-q", is_flag=True, help="Print only the version.")
def build(catalog: Path, retain: float, row_norm: str, omega: str, omega_row_map: str, clusters_from: str | None, omega_columns: str | None,
          n_clusters: int, omega_split: str,
          tau: float | None, index_kind: str, recall_queries: int, learned_rows: int, seed: int, engine: str,
          address: str | None, workers: int | None, quiet: bool) -> None:
    """Build the search structures of a catalog and make them current.

    Drops inactive features, keeps the features that carry `--retain` of the first
    singular vector's energy (paper §2.1), z-scores them, estimates Ω, builds the
    candidate index and measures its recall@10 against the exact ranking. Prints the
    paper's Table III (per layer: initial, active, kept features).

    \b
    Objects indexed since the last build become searchable with this one (statistics
    of the shards the last build read are reused). Queries running on the previous
    build are not disturbed.

    \b
    Examples:
      simdex build --catalog cat/
      simdex build --catalog cat/ --omega welch --retain 0.95
      simdex build --catalog cat/ --omega learned --learned-rows 8000
      simdex build --catalog cat/ --clusters-from label --omega-columns instance
      simdex build --catalog /shared/cat/ --engine ray --address auto
    """
    from simdex.cli.progress import ProgressBar, stage_unit
    from simdex.engine.build import build as run_build
    from simdex.engine.build import format_build_summary
    from simdex.engine.catalog import Catalog
    from simdex.engine.errors import SimdexError

    for name, value in (("--address", address), ("--workers", workers)):
        if value is not None and engine != "ray":
            raise click.BadParameter(f"{name} is an option of the Ray engine: add --engine ray", param_hint=name)

    bars: dict[str, ProgressBar] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = ProgressBar(total, stage, unit=stage_unit(stage))
        bar.update(done - bar.done)

    columns = None if omega_columns is None else tuple(
        c.strip() for c in omega_columns.split(",") if c.strip() and omega_columns.strip().lower() != "none")
    config = BuildConfig(retain=retain, row_norm=row_norm, omega=omega, omega_row_map=omega_row_map, clusters_from=clusters_from, omega_columns=columns,
                         n_clusters=n_clusters,
                         omega_split=omega_split, tau=tau, index=index_kind, recall_queries=recall_queries,
                         learned_rows=learned_rows, seed=seed, engine=engine, address=address, workers=workers)
    try:
        result = run_build(Catalog.open(catalog), config, progress=progress)
    except SimdexError as exc:  # CatalogError, BuildError, Ray not installed or not reachable
        raise click.ClickException(str(exc)) from None
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(result.version if quiet else format_build_summary(result.info, result.version))
