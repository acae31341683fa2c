"""`simdex check`: parse, call `engine.check.check_catalog`, print what is wrong and how to recover."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="check")
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder.")
def check(catalog: Path) -> None:
    """Verify every file of a catalog against the sizes and SHA-256 checksums recorded
    when it was committed; print each damaged file, what is wrong and how to recover.
    Exits with status 1 when something is damaged. Reads only; changes nothing.

    \b
    Example:
      simdex check --catalog cat/
    """
    from simdex.engine.check import check_catalog
    from simdex.engine.integrity import CatalogError

    try:
        report = check_catalog(catalog)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    for note in report.notes:
        click.echo(f"note: {note}")
    for p in report.problems:
        click.echo(f"DAMAGED {p.path}: {p.problem}" + (f"\n    recover: {p.recovery}" if p.recovery else ""))
    mb = report.bytes_checked / 1e6
    summary = (f"{report.files_checked} files ({mb:.1f} MB) verified in {report.elapsed_s:.2f} s; "
               f"{len(report.problems)} damaged")
    if report.problems:
        raise click.ClickException(summary)
    click.echo(f"{summary}: catalog {catalog} is intact")
