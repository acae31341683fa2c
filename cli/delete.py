"""`simdex delete`: parse, call `Catalog.add_deleted`, print what changed."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="delete")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder.")
def delete(ids: tuple[int, ...], catalog: Path) -> None:
    """Hide objects IDS from every query result, at once and in every later build.

    The objects' rows stay in the shards (a tombstone list records the deletion);
    queries started after this command no longer return them.

    \b
    Example:
      simdex delete --catalog cat/ 17 42
    """
    from simdex.engine.catalog import Catalog, CatalogError

    try:
        cat = Catalog.open(catalog)
        added = cat.add_deleted(list(ids))
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the tombstones of {catalog}: {exc.strerror or exc}; "
                                   "nothing was deleted") from None
    click.echo(f"deleted {added} object(s); {len(cat.deleted_ids())} hidden in total")
