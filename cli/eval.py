"""`simdex eval`: retrieval quality of the fuzzy P against other rankings."""

from __future__ import annotations

import json
from pathlib import Path

import click

from simdex.cli.progress import ProgressBar, stage_unit


@click.command(name="eval")
@click.option("--catalog", "-c", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder with a build and a label column.")
@click.option("--queries", "num_queries", default=1000, show_default=True, type=click.IntRange(0),
              help="Query objects drawn (seeded) from the query split; 0 = all of them.")
@click.option("--query-split", default="test", show_default=True, help="Split the queries come from.")
@click.option("--gallery-split", default="train", show_default=True, help="Split they are ranked against.")
@click.option("-k", "ks", multiple=True, type=click.IntRange(1), default=(1, 10, 100), show_default=True,
              help="Precision@k cut-offs (repeat the option).")
@click.option("--tau", type=click.FloatRange(0, min_open=True), default=None, help="τ (default: the build's).")
@click.option("--label-column", default="label", show_default=True, help="Column that says what is relevant.")
@click.option("--method", "methods", multiple=True, help="Only these rankings (repeat); default: all.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval(catalog, num_queries, query_split, gallery_split, ks, tau, label_column, methods, seed, fmt, quiet):  # noqa: A001
    """Measure retrieval quality with labels: queries from one split ranked against the
    other, precision@k and mAP side by side. An answer is relevant when it has the
    query's label.

    \b
    Where each ranking's Ω comes from:
      fuzzy P, Ω learned   fitted here on a seeded sample of the gallery's labels
                           (--seed), from uniform and from the gallery's eq. 5 and
                           Welch Ω; the start and its pull toward it chosen on
                           held-out gallery objects (as `simdex build --omega learned`)
      fuzzy P, Ω eq. 5     class means of the gallery's labels (eq. 5)
      fuzzy P, Ω uniform   equal weights, no labels
      fuzzy P, Ω Welch     Welch t between the gallery's classes
      fuzzy P, Ω SVD       v1² of the build's pruning, no labels
      fuzzy P, build's Ω   the Ω the build stored, what a query gets by default
                           (estimated at build time, from the train split when
                           there is one)
    The query split's labels never enter any Ω. The other rankings use no Ω: cosine
    of the raw object vectors, L2 of the z-scored kept features, and L2 of the raw
    pixels (in colour when the catalog's model reads 3 channels).

    Below the table: the build's Ω minus each other ranking, query by query on the
    same queries, with a 95 % interval (mean ± 1.96 standard errors of the paired
    differences). An interval that holds 0 means these queries cannot tell the two
    apart: ask for more (--queries 0 takes the whole split) before reading a winner
    into it. The JSON has the same figures under "paired".

    \b
    Example (the README's table):
      simdex eval --catalog catalogs/fmnist
    """
    from simdex.engine.catalog import CatalogError
    from simdex.evaluate import METHODS, EvalConfig, EvaluationError, evaluate, format_table

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}; choose from: " + "; ".join(METHODS), param_hint="--method")
    cfg = EvalConfig(query_split=query_split, gallery_split=gallery_split, num_queries=num_queries,
                     ks=tuple(sorted(set(ks))), tau=tau, label_column=label_column, seed=seed,
                     methods=tuple(methods) or METHODS)
    bars: dict[str, ProgressBar] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        if stage not in bars:
            for b in bars.values():
                b.close()
            bars.clear()
            bars[stage] = ProgressBar(total, stage, unit=stage_unit(stage))
        bars[stage].set(done)

    try:
        result = evaluate(catalog, cfg, progress)
    except (EvaluationError, CatalogError) as exc:
        raise click.ClickException(str(exc)) from None
    for b in bars.values():
        b.close()
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    click.echo(f"{result['queries']} queries ({result['query_split']}) against {result['gallery']} objects "
               f"({result['gallery_split']}), τ = {result['tau']}, {result['kept_features']} kept features, "
               f"build {result['build']} (its Ω: {result['build_omega']}"
               + (f"; rows mapped by {result['row_norm']}" if result.get("row_norm", "none") != "none" else "")
               + ("; every Ω and L2 of z measured on l2 rows, as the build's Ω for this column"
                  if result.get("omega_row_map", "none") != "none" else "") + ")")
    click.echo(format_table(result))
