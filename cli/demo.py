"""`simdex demo`: the main job of the README."""

from __future__ import annotations

from pathlib import Path

import click

from simdex.cli.progress import ProgressBar


@click.command(name="demo")
@click.option("--catalog", "-c", default="catalogs/fmnist", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Catalog folder (reused by a second run).")
@click.option("--report", default="report", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the HTML report.")
@click.option("--eval-queries", default=500, show_default=True, type=click.IntRange(0),
              help="Test queries of the retrieval evaluation in the report (0 = skip it).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(catalog: Path, report: Path, eval_queries: int, quiet: bool) -> None:
    """Index all 70,000 Fashion-MNIST images with the shipped model, build with Ω from
    the training split's labels, run one query per class and one two-query trapezoid,
    and write an HTML report: contact sheets with P, the training curves, Table III,
    Ω over the layers and the retrieval evaluation.

    Fashion-MNIST comes from Debian's dataset-fashion-mnist package (`make data`
    installs it, or downloads it with torchvision where apt is not available).
    """
    from simdex.demo import run_demo
    from simdex.engine.build import BuildError
    from simdex.engine.catalog import CatalogError
    from simdex.engine.searcher import SearchError
    from simdex.indexer.checkpoint import ModelFileError
    from simdex.indexer.sources import SourceError

    bars: dict[str, ProgressBar] = {}

    def close_bars() -> None:
        for b in bars.values():
            b.close()
        bars.clear()

    def index_progress(p) -> None:
        if quiet:
            return
        if "index" not in bars:
            close_bars()
            bars["index"] = ProgressBar(p.images_total, "indexing", unit="img")
        bars["index"].set(p.images_done, extra=f"{p.objects:,} objects")

    def progress(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        if stage not in bars:
            close_bars()
            bars[stage] = ProgressBar(total, stage, unit="q" if stage == "queries" else "obj")
        bars[stage].set(done)

    def say(text: str) -> None:
        close_bars()
        click.echo(text)

    try:
        result = run_demo(catalog, report, eval_queries, index_progress=index_progress, stage=say, progress=progress)
    except (SourceError, ModelFileError, CatalogError, BuildError, SearchError) as exc:
        raise click.ClickException(str(exc)) from None
    close_bars()
    if result.evaluation:
        from simdex.evaluate import format_table

        click.echo(format_table(result.evaluation))
    t = result.timings_s
    click.echo(f"done in {t['total']:.0f} s (index {t['index']:.0f} s, build {t['build']:.0f} s, "
               f"queries {t['queries']:.1f} s, evaluation {t['evaluation']:.0f} s)")
    click.echo(f"report: {result.report.resolve()}")
