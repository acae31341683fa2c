"""`simdex query`: parse, call `engine.searcher.Searcher.search`, print the ranked objects.

A query by object id imports neither torch nor DuckDB (DuckDB only with --where)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

FORMATS = ("table", "json", "csv", "parquet")
MEMBERSHIPS = ("auto", "gaussian", "trapezoid", "triangle", "max")


def _weakest_layers(parts: dict, most: dict, n: int = 3) -> str:
    """'C32 0.81  C31 0.90  C22 0.97': the layers that match the query least (their part of P over
    the most they could give)."""
    match = sorted((parts[name] / most[name], name) for name in parts if most.get(name, 0) > 0)
    return "  ".join(f"{name} {value:.2f}" for value, name in match[:n])


def _format_table(table, layer_weights: dict | None = None) -> str:
    from simdex.engine.text_table import text_table

    rows = table.to_pylist()
    cols = [c for c in ("rank", "object_id", "score", "semantic", "spatial", "label", "source", "layers")
            if c in table.column_names]
    cells = [[f"{r[c]:.4f}" if c in ("score", "semantic", "spatial") else _weakest_layers(r[c], layer_weights or {}) if c == "layers"
              else ("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    header = ["P" if c == "score" else "weakest layers (match)" if c == "layers" else c for c in cols]
    return text_table(header, cells)


@click.command(name="query")
@click.argument("ids", nargs=-1, type=int)
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder with a build (`simdex build`).")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Query with a new image instead of ids (runs the catalog's model); repeat for a set.")
@click.option("--box", default=None, metavar="X0,Y0,X1,Y1",
              help="With one --image: query by this region of it (image pixels, x1 and y1 excluded) instead of "
                   "the object the model finds; the model still sees the whole image.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of results.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Width τ of the membership, in standard deviations.  [default: the build's, 1.0]")
@click.option("--membership", type=click.Choice(MEMBERSHIPS), default="auto", show_default=True,
              help="gaussian (eq. 2) for one query; trapezoid (eq. 3), triangle or max for a set; "
                   "auto = gaussian for one, trapezoid for several.")
@click.option("--omega", default=None, metavar="NAME|COLUMN",
              help="Feature weights Ω of the score: another estimator the build stored (uniform, svd, clusters, "
                   "welch, learned; the last three need classes), or the Ω fitted to a label column's classes, "
                   "i.e. what similar means: `--omega instance` ranks the same item first, `--omega label` the "
                   "same class (`simdex build` fits one for label and instance where the objects have them). "
                   "Candidates stay weighted by the build's Ω: add --exact for an exact ranking.  "
                   "[default: the build's]")
@click.option("--where", default=None, metavar="SQL",
              help="Only objects whose metadata satisfy this SQL predicate, e.g. \"label = 'Sneaker'\".")
@click.option("--exact", is_flag=True, help="Scan the whole catalog instead of the candidate index.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table, json (one object per line), csv, or parquet (needs --output).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results to this file instead of standard output.")
@click.option("--explain", is_flag=True,
              help="Split each P into the parts the layers of φ give (they add up to P): in the table the "
                   "3 layers that match least (part / the most the layer can give), every layer's part in "
                   "json (`layers`), csv (`layers.C11`, …) and parquet.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a contact sheet of the query and its results with their P (PNG).")
@click.option("--candidates", type=click.IntRange(min=1), default=None,
              help="Candidates reranked exactly per query centre.  [default: 1000]")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists visited.  [default: the build's]")
@click.option("--permutation-invariant", "pi", is_flag=True,
              help="Re-order the best --pi-candidates by semantic similarity (Wald et al.): Pearson's r of the "
                   "objects' responses at --pi-layer after the best matching of their positions, so the same "
                   "content in another arrangement still ranks high. Runs the model on every candidate.")
@click.option("--pi-layer", default=None, metavar="LAYER", help="Layer of the response, e.g. C82.  [default: the "
              "second-to-last layer of φ]")
@click.option("--pi-grid", type=click.IntRange(min=0), default=4, show_default=True,
              help="Cells per side the object's window is pooled to (0 = every position of the whole map).")
@click.option("--pi-candidates", type=click.IntRange(min=1), default=100, show_default=True,
              help="Results by P that the permutation-invariant mode re-orders.")
@click.option("--pi-matcher", type=click.Choice(["optimal", "greedy"]), default="optimal", show_default=True,
              help="Matching of positions: optimal (linear assignment) or greedy (approximate, for large sets).")
def query(ids: tuple[int, ...], catalog: Path, images: tuple[Path, ...], box: str | None, k: int, tau: float | None,
          membership: str, omega: str | None, where: str | None, exact: bool, fmt: str, output: Path | None,
          explain: bool, sheet: Path | None,
          candidates: int | None, nprobe: int | None, pi: bool, pi_layer: str | None, pi_grid: int,
          pi_candidates: int, pi_matcher: str) -> None:
    """Find the objects most similar to objects IDS (or to --image files), with their P.

    One id is a Gaussian query; several ids (or images) form one set, matched by the
    trapezoid of eq. 3 (or --membership max / triangle). P(v_i|v_q) ∈ [0, 1] is the
    Ω-weighted mean of the per-feature memberships; the query object itself has P = 1.

    \b
    Examples:
      simdex query --catalog cat/ 42
      simdex query --catalog cat/ 42 43 44 --membership max -k 20
      simdex query --catalog cat/ 42 --omega uniform --exact
      simdex query --catalog cat/ 42 --omega instance
      simdex query --catalog cat/ 42 --explain
      simdex query --catalog cat/ 42 --where "label = 'Sneaker' AND split = 'test'" --format json
      simdex query --catalog cat/ --image boot.png --sheet boots.png
      simdex query --catalog cat/ --image street.png --box 40,10,120,90
      simdex query --catalog cat/ 42 --permutation-invariant --pi-layer C82
    """
    from simdex.engine.catalog import CatalogError
    from simdex.engine.searcher import Searcher, SearchError

    if bool(ids) == bool(images):
        raise click.UsageError("give object ids or --image files (one of them)")
    if box is not None and len(images) != 1:
        raise click.UsageError("--box selects a region of one --image")
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    _check_outputs(output, sheet, catalog)  # before searching: a mistake costs no query
    try:
        searcher = Searcher.open(catalog)
        features = _image_features(searcher, images, box) if images else None
        table = searcher.search(ids=list(ids) or None, features=features, k=max(k, pi_candidates) if pi else k,
                                tau=tau, membership=membership, where=where, exact=exact, n_candidates=candidates,
                                nprobe=nprobe, omega=omega, explain=explain)
        if pi:
            table = _permutation_rerank(searcher, table, ids, images, box, k, pi_layer, pi_grid, pi_matcher)
    except (CatalogError, SearchError) as exc:
        raise click.ClickException(str(exc)) from None

    if table.num_rows == 0:
        click.echo("no object matches" + (f" --where {where!r}" if where else "") + " (deleted objects are never "
                   "returned)", err=True)
    try:
        _write_results(table, fmt, output, searcher.omega_per_layer(omega) if explain and fmt == "table" else None)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    if sheet is not None:
        _draw_sheet(searcher, table, ids, images, sheet)


def _check_outputs(output: Path | None, sheet: Path | None, catalog: Path) -> None:
    """--output and --sheet: files in existing folders, outside the catalog; --sheet of an image
    format Pillow writes (BadParameter otherwise)."""
    from simdex.cli.sql import _check_output

    if output is not None:
        _check_output(output, catalog)
    if sheet is not None:
        from PIL import Image

        formats = Image.registered_extensions()
        if formats.get(sheet.suffix.lower()) not in Image.SAVE:
            raise click.ClickException(f"cannot write the contact sheet {sheet}: not an image file name Pillow "
                                       f"can write (use .png or .jpg)")
        try:
            _check_output(sheet, catalog)
        except click.BadParameter as exc:
            raise click.ClickException(f"cannot write the contact sheet {sheet}: {exc.message}") from None


def _image_features(searcher, images, box):
    """Raw feature vectors of the query images (the one path that runs the model, so imports torch)."""
    from simdex.indexer.query_features import QueryImageError, image_features, parse_box

    try:
        boxes = None if box is None else [parse_box(box)]
        return image_features(searcher.catalog, list(images), boxes=boxes)
    except QueryImageError as exc:
        raise click.ClickException(str(exc)) from None


def _write_results(table, fmt: str, output: Path | None, layer_weights: dict | None) -> None:
    """The results as a table, JSON lines or CSV on standard output or in `output`; Parquet in `output`."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    if fmt == "table":
        text = _format_table(table, layer_weights)
    elif fmt == "json":
        text = "\n".join(json.dumps(row, default=str) for row in table.to_pylist())
    else:
        import pyarrow.csv as pacsv

        buf = __import__("io").BytesIO()
        pacsv.write_csv(table.flatten(), buf)  # layers → layers.C11, layers.C12, …
        text = buf.getvalue().decode().rstrip("\n")
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")


def _permutation_rerank(searcher, table, ids, images, box, k, layer, grid, matcher):
    from simdex.permutation_search import PermutationError, permutation_rerank

    if box is not None:
        raise click.UsageError("--permutation-invariant compares whole objects; it does not take --box")
    if ids:
        rows = searcher.metadata(list(ids), ["source", "component"]).to_pylist()
    else:  # the largest object of each image, as the query by image uses
        rows = [{"source": str(p), "component": 0} for p in images]
    try:
        return permutation_rerank(searcher, table, rows, k, layer=layer, grid=grid, matcher=matcher)
    except PermutationError as exc:
        raise click.ClickException(str(exc)) from None


def _draw_sheet(searcher, table, ids, images, path: Path) -> None:
    from simdex.sheet import SheetError, draw_result_sheet

    missing: list[str] = []
    try:
        draw_result_sheet(searcher, table, path, query_ids=list(ids), query_images=list(images),
                          on_missing=lambda source, reason: missing.append(source))
    except (SheetError, OSError, ValueError) as exc:  # ValueError: a format Pillow cannot write
        raise click.ClickException(f"cannot write the contact sheet {path}: {exc}") from None
    click.echo(f"contact sheet: {path}", err=True)
    if missing:
        click.echo(f"note: {len(missing)} image(s) of the catalog could not be read (first: {missing[0]}); "
                   "they are drawn as crossed grey cells", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(query())
