"""`simdex scenes`: write the scenes benchmark (indexer.scenes) into a folder."""

from __future__ import annotations

from pathlib import Path

import click

from simdex.cli.progress import ProgressBar


@click.command(name="scenes")
@click.option("--out", "out", default="data/scenes", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder to write the images and CSVs into.")
@click.option("--train-items", default=6000, show_default=True, type=click.IntRange(1),
              help="Items (Fashion-MNIST items and drawn shapes) of the training split.")
@click.option("--train-copies", default=4, show_default=True, type=click.IntRange(1),
              help="Scenes per training item (other poses and backgrounds).")
@click.option("--plain", "plain_fmnist", default=6000, show_default=True, type=click.IntRange(0),
              help="Fashion-MNIST training items added as they are (28×28, grey on black).")
@click.option("--test-items", default=600, show_default=True, type=click.IntRange(1),
              help="Held-out items of the test split (Fashion-MNIST test items and new shapes).")
@click.option("--test-copies", default=4, show_default=True, type=click.IntRange(2),
              help="Scenes per test item: the first is split 'query', the others 'gallery'.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(16), help="Canvas side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def scenes(out, train_items, train_copies, plain_fmnist, test_items, test_copies, size, seed, quiet):
    """Write the scenes benchmark: Fashion-MNIST items and drawn shapes (ellipse, polygon,
    star, ring, cross), each with its own colours and pattern, composited onto SIZE×SIZE
    colour canvases at random position, scale (30–90 % of the frame) and rotation, on
    white, black, solid, gradient, noise or texture backgrounds, with 0–2 smaller
    distractor items. Every item appears in several scenes: `instance` names the item,
    `label` its class; masks come from the compositing. No item is in both splits.

    OUT/train.csv and OUT/test.csv are image lists for `simdex index` and `simdex train`
    (path, mask, label and metadata columns). In test.csv the first copy of each item
    has split 'query', the other copies 'gallery'. The same options give the same files.

    \b
    Example (the benchmark of the README, ≈ 5 minutes):
      simdex scenes --out data/scenes
      simdex index data/scenes/train.csv --catalog catalogs/scenes
      simdex index data/scenes/test.csv --catalog catalogs/scenes
      simdex build --catalog catalogs/scenes     # Ω for label, and for instance (--omega instance)
      simdex eval --catalog catalogs/scenes --label-column instance --query-split query --gallery-split gallery
    """
    from simdex.indexer.scenes import ScenesConfig, write_scenes
    from simdex.indexer.sources import SourceError

    if size % 8:
        raise click.BadParameter("must be divisible by 8 (the U-Net pools three times)", param_hint="--size")
    cfg = ScenesConfig(size=size, train_items=train_items, train_copies=train_copies, plain_fmnist=plain_fmnist,
                       test_items=test_items, test_copies=test_copies, seed=seed)
    bars: dict[str, ProgressBar] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for name in list(bars):
                bars.pop(name).close()
            bars[stage] = ProgressBar(total, stage, unit="img", enabled=not quiet)
        bars[stage].update(done - bars[stage].done)

    try:
        summary = write_scenes(out, cfg, progress=progress)
    except (SourceError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for b in bars.values():
            b.close()
    click.echo(f"Wrote {summary['train_images']:,} training images ({summary['train_items']:,} items) and "
               f"{summary['test_images']:,} test images ({summary['test_items']:,} items) into {out}: "
               f"{out}/train.csv, {out}/test.csv")
