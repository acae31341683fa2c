"""`simdex rsm`: parse, call `simdex.permutation_search.rsm_of`, write the matrices and their picture."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np


@click.command(name="rsm")
@click.argument("ids", nargs=-1, type=int)
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder: its objects (IDS) and its model (for --image files too).")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image file to include (its largest object); repeat.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for semantic.npy/.csv, spatio_semantic.npy/.csv and rsm.png.")
@click.option("--layer", default=None, metavar="LAYER",
              help="Layer of φ whose responses are compared, e.g. C82.  [default: the second-to-last]")
@click.option("--grid", type=click.IntRange(min=0), default=4, show_default=True,
              help="Cells per side each object's window is pooled to; 0 = every position of the whole map.")
@click.option("--matcher", type=click.Choice(["optimal", "greedy"]), default="optimal", show_default=True,
              help="Matching of positions for the semantic RSM.")
def rsm(ids: tuple[int, ...], catalog: Path, images: tuple[Path, ...], out_dir: Path, layer: str | None, grid: int,
        matcher: str) -> None:
    """Write the semantic and spatio-semantic RSMs of a set of images (Wald et al.).

    Entry (i, j) of the spatio-semantic RSM is Pearson's r of the two responses compared
    position by position; of the semantic RSM, r after the best matching of positions
    (linear assignment), so the same content in another arrangement scores high. Rows
    follow IDS, then the --image files.

    \b
    Examples:
      simdex rsm -c cat/ 0 1 2 3 4 5 --out rsm/
      simdex rsm -c cat/ --image a.png --image b.png 17 --layer C82 --grid 0 --out rsm/
    """
    from simdex.engine.catalog import CatalogError
    from simdex.engine.searcher import Searcher, SearchError
    from simdex.permutation_search import PermutationError, rsm_of, write_rsms

    try:
        searcher = Searcher.open(catalog)
        rows = searcher.metadata(list(ids), ["source", "component"]).to_pylist() if ids else []
        if len(rows) != len(ids):
            searcher.rows_of(list(ids))  # names the missing ids
        rows += [{"source": str(p), "component": 0} for p in images]
        matrices = rsm_of(searcher.catalog, rows, layer=layer, grid=grid, matcher=matcher)
    except (CatalogError, SearchError, PermutationError) as exc:
        raise click.ClickException(str(exc)) from None
    names = [str(i) for i in ids] + [p.name for p in images]
    for path in write_rsms(matrices, names, out_dir):
        click.echo(str(path))
    off = ~np.eye(len(names), dtype=bool)
    click.echo(f"mean off-diagonal r: semantic {matrices['semantic'][off].mean():.3f}, "
               f"spatio-semantic {matrices['spatio_semantic'][off].mean():.3f}", err=True)
