"""`simdex labels`: parse, call `engine.labels.label_similarity`, print the ranking."""

from __future__ import annotations

import json
from pathlib import Path

import click

FORMATS = ("table", "json", "csv")


def _format_table(result) -> str:
    from simdex.engine.text_table import text_table

    rows = result.table.to_pylist()
    header = ["rank", "label", "Welch sim", "shared ch", "proto rank", "proto cos", "objects"]
    cells = [[str(r["welch_rank"]), r["label"], f"{r['welch_similarity']:.4f}",
              f"{r['shared_channels']}/{result.significant_channels}", str(r["prototype_rank"]),
              f"{r['prototype_cosine']:.4f}", f"{r['objects']:,}"] for r in rows]
    table = text_table(header, cells, right={0, 2, 3, 4, 5, 6})
    return "\n".join([result.summary(), "", table])


@click.command(name="labels")
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder whose objects carry labels.")
@click.option("--similar-to", "label", required=True, metavar="LABEL", help="The label to compare the others with.")
@click.option("--split", default=None, help="Use only objects of this split (e.g. train).  [default: every object]")
@click.option("--column", default="label", show_default=True, help="The column of labels.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01, show_default=True,
              help="Family-wise significance level of the per-channel one-sided Welch tests (Bonferroni).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def labels(catalog: Path, label: str, split: str | None, column: str, alpha: float, fmt: str) -> None:
    """Rank the labels most similar to LABEL (Park, "Finding Similar Labels with Internal
    Representations").

    Per label: the prototype (per-channel mean of its objects' raw features) and a
    one-sided Welch t-test per channel against all other objects. A label's
    significance vector holds t where p < alpha / channels (Bonferroni), else 0.
    Labels are ranked by the cosine of their significance vectors to LABEL's
    ("Welch sim"; "shared ch": channels significant for both), and beside it by the
    cosine of their prototypes. One streaming pass; memory is labels × channels.

    \b
    Example:
      simdex labels --catalog cat/ --similar-to "Ankle boot" --split train
    """
    from simdex.engine.catalog import Catalog, CatalogError
    from simdex.engine.labels import LabelError, label_similarity

    try:
        result = label_similarity(Catalog.open(catalog), label, column=column, split=split, alpha=alpha)
    except (CatalogError, LabelError) as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "table":
        click.echo(_format_table(result))
    elif fmt == "json":
        for row in result.table.to_pylist():
            click.echo(json.dumps({"similar_to": result.label, **row}))
    else:
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(result.table, buf)
        click.echo(buf.getvalue().decode().rstrip("\n"))
