"""`simdex explain`: parse, call `simdex.explain_maps.explain_pair`, print the parts and draw the maps."""

from __future__ import annotations

import json
from pathlib import Path

import click

MEMBERSHIPS = ("auto", "gaussian", "trapezoid", "triangle", "max")


@click.command(name="explain")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder with a build (`simdex build`); its model and images must still be there.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the maps over the images into this PNG.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: P and each layer's part; json: also every map (pixels and per layer).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the table or JSON to this file instead of standard output.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Width τ of the membership.  [default: the build's]")
@click.option("--membership", type=click.Choice(MEMBERSHIPS), default="auto", show_default=True,
              help="As for `simdex query`: gaussian for one query, trapezoid (or triangle, max) for a set.")
@click.option("--omega", type=click.Choice(["uniform", "svd", "clusters", "welch"]), default=None,
              help="Feature weights Ω of P: another estimator the build stored.  [default: the build's]")
def explain(ids: tuple[int, ...], catalog: Path, out: Path | None, fmt: str, output: Path | None,
            tau: float | None, membership: str, omega: str | None) -> None:
    """Show where on the images the P of an answer comes from: similarity maps.

    IDS are the query object(s) then the answer: `simdex explain -c cat/ A B` explains
    P(B|A). P = Σ_j ω_j g_j is split over each feature's window in proportion to each
    position's share of the feature's mean, per layer (and cell of a grid region), then
    carried to the input's pixels; every image's map sums exactly to P. The model runs
    again on both images (about 3 s, most of it importing torch).

    \b
    Examples:
      simdex explain -c cat/ 0 25719 --out map.png
      simdex explain -c cat/ 0 25719 --format json -o map.json
      simdex explain -c cat/ 3 8 17 --membership max      # the set {3, 8} and the answer 17
    """
    from simdex.engine.catalog import CatalogError
    from simdex.engine.searcher import Searcher, SearchError
    from simdex.explain_maps import ExplainError, draw_explanation, explain_pair

    if len(ids) < 2:
        raise click.UsageError("give a query object id and an answer id (A B), or several query ids then the answer")
    try:
        searcher = Searcher.open(catalog)
        expl = explain_pair(searcher, list(ids[:-1]), ids[-1], membership=membership, tau=tau, omega=omega)
    except (CatalogError, SearchError, ExplainError) as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        text = json.dumps(expl.to_dict())
    else:
        most = searcher.omega_per_layer(omega)
        lines = [f"P({expl.answer_id} | {','.join(map(str, expl.query_ids))}) = {expl.P:.4f}   "
                 f"({expl.membership}, τ {expl.tau:g}, Ω {expl.omega})",
                 "map sums: " + "  ".join(f"{im.role} {im.object_id} {im.pixel_map.sum():.4f}" for im in expl.images),
                 "", "layer  part of P  most it can give  match"]
        for name, part in expl.layer_parts.items():
            top = sum(v for k, v in most.items() if k.split("@")[0] == name)
            lines.append(f"{name:<5}  {part:9.4f}  {top:16.4f}  {part / top if top else 0:5.2f}")
        text = "\n".join(lines)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")
    if out is not None:
        draw_explanation(expl, out)
        click.echo(f"similarity maps: {out}", err=True)
