"""`simdex index`: parse, call `indexer.runner.index_source`, draw progress, print a summary."""

from __future__ import annotations

from pathlib import Path

import click

from simdex.cli.progress import ProgressBar
from simdex.indexer.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_AREA, DEFAULT_REGION


class _IndexBar:
    """Draws `IndexProgress` callbacks with the shared ProgressBar (created at the first batch, when the
    number of images to do is known)."""

    def __init__(self) -> None:
        self.bar: ProgressBar | None = None

    def __call__(self, p) -> None:
        if self.bar is None:
            self.bar = ProgressBar(p.images_total, "indexing", unit="images")
            self.bar.start -= p.elapsed_s  # the job's clock: the first batch took time too
        self.bar.set(p.images_done, extra=f"{p.objects:,} objects  {p.errors:,} skipped")

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _backbone(name: str | None, weights: Path | None, layers: str, image_size: int | None, download: bool,
              model: Path | None):
    """The LoadedModel of --backbone/--weights (indexer.backbones); a ClickException for a bad combination."""
    from simdex.indexer.backbones import DEFAULT_IMAGE_SIZE, BackboneError, download_weights, load_backbone

    if name is None:
        raise click.UsageError("--weights, --image-size and --download-weights need --backbone resnet18|resnet50")
    if model is not None:
        raise click.UsageError("--model and --backbone exclude each other: a catalog holds one network's features")
    try:
        if weights is None and download:
            weights = download_weights(name)
        return load_backbone(name, weights, layers, image_size or DEFAULT_IMAGE_SIZE)
    except BackboneError as exc:
        raise click.ClickException(str(exc)) from None


@click.command(name="index")
@click.argument("source")
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder; created if missing (it must then be new or empty).")
@click.option("--model", "-m", "model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Model file from `simdex train`. Default: the model shipped with simdex.")
@click.option("--objects", type=click.Choice(["largest", "all"]), default=None,
              help="Objects per image: the largest segment component (the paper) or every component "
                   "of at least --min-area pixels.  [default: largest]")
@click.option("--min-area", type=click.IntRange(min=1), default=None,
              help=f"Smallest object kept, in pixels of the model's input.  [default: {DEFAULT_MIN_AREA}]")
@click.option("--region", type=click.Choice(["bbox", "mask", "full", "grid2", "grid4", "mask+grid2"]), default=None,
              help="Where each layer's channel means are taken. mask+grid2 (the default): the object's mask "
                   "carried to the layer (area-weighted: the object without its background) and the mask's "
                   "part in each of its box's 2×2 cells (its layout), 5 means per channel; mask: the mask "
                   "alone (a fifth of the features, for the largest catalogs); bbox: its bounding box (the "
                   "paper); full: the whole map; grid2 / grid4: the box split in 2×2 / 4×4 cells, background "
                   "included. Chosen on the scenes benchmark and Fashion-MNIST (README). Fixed per catalog.  "
                   f"[default: {DEFAULT_REGION}, or the catalog's]")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Local engine: decoding processes (0: decode in the main process); Ray engine: model "
                   "actors.  [default: local 0 for IDX files, else min(4, CPUs - 1); ray one per GPU, "
                   "else one per CPU of the cluster]")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data and model actors on a Ray cluster "
                   "(pip install 'simdex[ray]'). The catalog and its ids are the same.")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="With --engine ray: the cluster to join (`auto`: the one `ray start` runs here).  "
                   "[default: start a local Ray cluster for this job]")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Index only the first N images of the source; a later run without it continues.")
@click.option("--views", default="auto", metavar="N|auto",
              help="Also run a seeded sample of N of the images through the model twice more, each in a "
                   "random pose and colour: pairs of views of one object, from which `simdex build` learns Ω "
                   "where the objects have no labels (self-supervised; on the scenes benchmark same-item mAP "
                   "0.133 vs 0.068 for uniform Ω). auto: 2,000 when the source has no labels, else 0.  [default: auto]")
@click.option("--backbone", type=click.Choice(["resnet18", "resnet50"]), default=None,
              help="Features from a torchvision classifier instead of the U-Net (Appendix B): each "
                   "stage's map averaged over the whole image (--region full) or a grid of it. Needs --weights.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The backbone's weights: a file of torch.save(model.state_dict()) (loaded without running code).")
@click.option("--backbone-layers", type=click.Choice(["stages", "blocks"]), default="stages", show_default=True,
              help="φ of a backbone: the output of each stage (layer1..layer4) or of each residual block.")
@click.option("--image-size", type=click.IntRange(min=32), default=None,
              help="A backbone's input canvas (a multiple of 32); images are fitted into it.  [default: 224]")
@click.option("--download-weights", is_flag=True,
              help="Without --weights, let torchvision download the backbone's ImageNet weights (needs a network).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def index(source: str, catalog: Path, model: Path | None, objects: str | None, min_area: int | None,
          region: str | None, batch_size: int, workers: int | None, engine: str, address: str | None,
          limit: int | None, views: str, backbone: str | None, weights: Path | None, backbone_layers: str, image_size: int | None,
          download_weights: bool, quiet: bool) -> None:
    """Index the images of SOURCE into a catalog: one row of features per object.

    SOURCE is a folder of images (sub-folders become labels), a .csv or .parquet list
    with a `path` column (optional `label`; every other column is kept as metadata), an
    IDX file, or `fashion-mnist` (both splits, with a `split` column).

    Each image is fitted to the model's input, segmented by the model, and every object
    found (the largest by default) becomes one row with its label, metadata, bounding box
    (in the original image's pixels), area and its feature vector: the mean of every
    channel of every layer of the network inside the object's region.

    \b
    The job is safe to interrupt: run the same command again and it resumes where the
    last committed shard ended, with exactly one row per object. Running it after it has
    finished does nothing; indexing another source appends to the catalog (with the same
    model only). Images that cannot be read, or hold no object, are listed with their
    reason in the catalog's errors table; the job goes on.

    \b
    Examples:
      simdex index fashion-mnist --catalog cat/
      simdex index photos/ --catalog cat/ --model boots.pt --objects all --min-area 20
      simdex index list.csv --catalog cat/ --region mask --workers 4
      simdex index fashion-mnist --catalog cat-grid/ --region grid2
      simdex index photos/ --catalog cat-r50/ --backbone resnet50 --weights resnet50.pth
      simdex index list.parquet --catalog /shared/cat/ --engine ray --address auto --workers 8
    """
    from simdex.engine.errors import SimdexError
    from simdex.indexer.runner import IndexOptions, index_source

    if address is not None and engine != "ray":
        raise click.BadParameter("--address names a Ray cluster: add --engine ray", param_hint="--address")
    if views != "auto" and not (views.isdigit()):
        raise click.BadParameter(f"{views!r} is neither a number of images nor auto", param_hint="--views")
    opts = IndexOptions(objects=objects, min_area=min_area, region=region, batch_size=batch_size,
                        workers=workers, limit=limit, engine=engine, address=address,
                        views=None if views == "auto" else int(views))
    bar = None if quiet else _IndexBar()
    try:
        if backbone is not None or weights is not None or download_weights or image_size is not None:
            model = _backbone(backbone, weights, backbone_layers, image_size, download_weights, model)
        result = index_source(source, catalog, model, opts, progress=bar)
    except (SimdexError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. a full disk: what was committed stays; the same command resumes
        raise click.ClickException(f"cannot write to {catalog}: {exc.strerror or exc}; the images committed so far "
                                   f"are kept: run the same command again to resume") from None
    finally:
        if bar is not None:
            bar.finish()
    if quiet:
        return
    if result.images == 0:
        click.echo(f"Nothing to do: {result.already_indexed:,} of {result.source_images:,} images of "
                   f"{result.source} are already in {result.catalog}.")
    else:
        if result.resumed:
            click.echo(f"Resumed at image {result.already_indexed:,} of {result.source_images:,}.")
        click.echo(f"Indexed {result.images:,} images of {result.source} into {result.catalog} in "
                   f"{result.elapsed_s:.1f} s ({result.images_per_s:,.0f} images/s): {result.objects:,} objects.")
        skipped = sum(result.errors.values())
        if skipped:
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in result.errors.most_common())
            click.echo(f"Skipped {skipped:,} images ({reasons}); see the catalog's errors table.")
        else:
            click.echo("Skipped 0 images.")
    if result.views:
        click.echo(f"Views: {result.views:,} sampled images indexed twice more in a random pose and colour "
                   f"(for a self-supervised Ω; `simdex build` uses them where there are no labels).")
    click.echo(f"Catalog {result.catalog}: {result.catalog_objects:,} objects.")
