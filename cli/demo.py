"""`simdex demo`: the main job of the README."""

from __future__ import annotations

from pathlib import Path

import click

from simdex.cli.progress import ProgressBar, stage_unit


@click.command(name="demo")
@click.option("--catalogs", "catalogs", default="catalogs", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the two catalogs, fmnist/ and scenes/ (reused by a second run).")
@click.option("--report", default="report", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the HTML reports (index.html, scenes/index.html).")
@click.option("--fmnist-train", default=10_000, show_default=True, type=click.IntRange(0),
              help="Fashion-MNIST training images to index (0 = all 60,000).")
@click.option("--fmnist-test", default=2_000, show_default=True, type=click.IntRange(0),
              help="Fashion-MNIST test images to index (0 = all 10,000).")
@click.option("--no-scenes", is_flag=True, help="Only the Fashion-MNIST part.")
@click.option("--eval-queries", default=500, show_default=True, type=click.IntRange(0),
              help="Queries of each retrieval evaluation in the reports (0 = skip them).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(catalogs: Path, report: Path, fmnist_train: int, fmnist_test: int, no_scenes: bool, eval_queries: int,
         quiet: bool) -> None:
    """The main job. Index Fashion-MNIST (the first --fmnist-train and --fmnist-test
    images) with the shipped model, build with Ω from the training split's labels, run
    one query per class and one two-query trapezoid, and write report/index.html:
    contact sheets with P, a similarity map, the training curves, Table III, Ω over
    the layers and the retrieval evaluation. Then the same on the scenes benchmark at
    a demo size (items on colour backgrounds in any pose, written into
    data/scenes-demo), queried by one held-out copy of an item per class and evaluated
    with instance labels: report/scenes/index.html.

    Fashion-MNIST comes from Debian's dataset-fashion-mnist package (`make data`
    installs it, or downloads it with torchvision where apt is not available).
    """
    from simdex.demo import run_demos
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
            bars[stage] = ProgressBar(total, stage, unit=stage_unit(stage))
        bars[stage].set(done)

    def say(text: str) -> None:
        close_bars()
        click.echo(text)

    try:
        results = run_demos(catalogs, report, eval_queries, fmnist_train or None, fmnist_test or None,
                            scenes=not no_scenes, index_progress=index_progress, stage=say, progress=progress)
    except (SourceError, ModelFileError, CatalogError, BuildError, SearchError) as exc:
        raise click.ClickException(str(exc)) from None
    close_bars()
    from simdex.evaluate import format_table

    for result in results:
        if result.evaluation:
            click.echo(f"{result.catalog}: retrieval with {result.evaluation['label_column']} labels")
            click.echo(format_table(result.evaluation, paired=False))
        t = result.timings_s
        click.echo(f"{result.catalog} done in {t['total']:.0f} s (index {t['index']:.0f} s, build {t['build']:.0f} s, "
                   f"queries {t['queries']:.1f} s, evaluation {t['evaluation']:.0f} s)")
    click.echo("report: " + "   ".join(str(r.report.resolve()) for r in results))
