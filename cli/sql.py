"""`simdex sql`: parse, open an `engine.sql.SqlSession`, run the statement, print the rows."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import sys
from pathlib import Path

import click

FORMATS = ("table", "csv", "json", "parquet")
LIST_SHOWN = 4  # values of a list shown in the table format before "…"
TEXT_SHOWN = 48  # characters of a text cell in the table format


def _cell(value) -> str:
    """A value as a short, readable table cell."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else _cell(v) for v in value[:LIST_SHOWN])
        more = f", … ({len(value)} values)" if len(value) > LIST_SHOWN else ""
        return f"[{shown}{more}]"
    text = json.dumps(value, default=str) if isinstance(value, dict) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…"


def format_table(names: list[str], rows: list[dict], numeric: list[bool], more: bool, total: int) -> str:
    from simdex.engine.text_table import text_table

    cells = [[_cell(r[n]) for n in names] for r in rows]
    out = [text_table(names, cells, right=numeric, rule=True, strip=True)]
    out.append(f"({total} rows shown; more rows follow: use --max-rows, or --format csv|json|parquet)" if more
               else f"({total} row{'s' if total != 1 else ''})")
    return "\n".join(out)


def _write_text(schema, batches, fmt: str, out, max_rows: int) -> None:
    import pyarrow as pa

    names = schema.names
    if fmt == "table":
        numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
                   for f in schema]
        rows, more = [], False
        for batch in batches:
            rows.extend(batch.to_pylist())
            if len(rows) > max_rows:
                more = True
                break
        rows = rows[:max_rows]
        out.write(format_table(names, rows, numeric, more, len(rows)) + "\n")
    elif fmt == "json":
        for batch in batches:
            for row in batch.to_pylist():
                out.write(json.dumps(row, default=str) + "\n")
    else:  # csv: lists and structs as JSON text, so every type has one cell
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for batch in batches:
            for row in batch.to_pylist():
                writer.writerow(["" if v is None else json.dumps(v, default=str) if isinstance(v, list | dict) else v
                                 for v in (row[n] for n in names)])


@click.command(name="sql")
@click.argument("statement", required=False)
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder.")
@click.option("--search", "searches", multiple=True, metavar='"ID[,ID…] [k]"',
              help="Search whose answers fill the `results` view (repeatable): one id (Gaussian) or a "
                   "set of ids (trapezoid), and the number of answers.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Answers per --search that gives no k.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=None,
              help="τ of the searches and of simdex_p.  [default: the build's]")
@click.option("--exact", is_flag=True, help="Answer the searches by scanning the whole catalog.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table (long lists shortened), csv, json (one object per line), parquet (needs --output).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the rows to this file instead of standard output.")
@click.option("--max-rows", type=click.IntRange(min=1), default=100, show_default=True,
              help="Rows printed by the table format.")
@click.option("--views", "list_views", is_flag=True, help="List the views and their columns.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Stop a statement that runs longer than this many seconds (0: no limit).")
@click.option("--memory-limit", default="2GB", show_default=True,
              help="DuckDB's memory limit; a statement needing more fails (nothing spills to disk).")
def sql(statement: str | None, catalog: Path, searches: tuple[str, ...], k: int, tau: float | None, exact: bool,
        fmt: str, output: Path | None, max_rows: int, list_views: bool, timeout_s: float, memory_limit: str) -> None:
    """Run SQL STATEMENT (or - to read it from standard input) over a catalog.

    \b
    Views: objects (metadata, bbox), features (object_id, raw FLOAT[N] vector),
    errors, deleted, layers (φ); from the current build: build, kept_features
    (layer, channel, mean, std, omega), table_iii; and results (search, query,
    rank, object_id, score) for each --search. Macros: simdex_p(a, b [, tau := τ])
    is P(v_a|v_b) (eq. 4, Gaussian) of two raw vectors with the build's z-score
    and Ω; simdex_z(a) is the z-scored kept features of a raw vector.

    The session reads only the catalog and writes nothing: COPY, ATTACH, read_csv,
    read_parquet, INSTALL/LOAD and SET are refused. Save rows with --output (a
    file outside the catalog). A statement is stopped past --timeout, fails past
    --memory-limit, and stops at once on Ctrl-C or SIGTERM.

    \b
    Examples:
      simdex sql -c cat/ "SELECT label, count(*) FROM objects GROUP BY 1 ORDER BY 1"
      simdex sql -c cat/ --search "42 20" \\
        "SELECT r.rank, r.score, o.label FROM results r JOIN objects o USING (object_id) ORDER BY r.rank"
      simdex sql -c cat/ "SELECT f.object_id, simdex_p(f.features, q.features) AS p
        FROM features f, features q WHERE q.object_id = 42 ORDER BY p DESC LIMIT 5"
      simdex sql -c cat/ "SELECT layer, sum(omega) FROM kept_features GROUP BY 1" --format csv
    """
    from simdex.engine.catalog import CatalogError
    from simdex.engine.searcher import SearchError
    from simdex.engine.sql import SearchSpec, SqlError, SqlSession

    if statement is None and not list_views:
        raise click.UsageError("give a SQL statement (or --views to list the views)")
    if statement == "-":
        statement = sys.stdin.read()
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if output is not None:
        _check_output(output, catalog)
    try:
        specs = [SearchSpec.parse(s, default_k=k) for s in searches]
        session = SqlSession.open(catalog, specs, tau=tau, exact=exact, timeout_s=timeout_s,
                                  memory_limit=memory_limit)
    except (CatalogError, SearchError, SqlError) as exc:
        raise click.ClickException(str(exc)) from None
    _warn_unjournalled(session.catalog, catalog)
    with session, _sigterm_as_interrupt():
        try:
            if list_views:
                table = session.describe()
                if fmt == "table":
                    for row in table.to_pylist():
                        click.echo(f"{row['view']}: {row['holds']}\n    {row['columns']}")
                    return
                result = (table.schema, iter(table.to_batches()))
            else:
                result = session.batches(statement)
            if result is None:
                click.echo("OK (the statement returned no rows; the session's memory is discarded on exit)", err=True)
                return
            _write_result(*result, fmt, output, max_rows)
        except SqlError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted: the statement was stopped") from None


def _warn_unjournalled(cat, catalog: Path) -> None:
    """One line on standard error when shard or errors files that no journal lists exist: their
    rows are not in the views (a lost journal, or a job killed while it committed)."""
    from simdex.engine.catalog import CatalogError

    try:
        unlisted = cat.unlisted_files()
    except CatalogError:
        return
    if unlisted:
        click.echo(f"warning: {len(unlisted)} shard/errors file(s) of {catalog} are listed by no job journal, so "
                   f"their rows are not shown (`simdex check --catalog {catalog}` explains)", err=True)


def _check_output(output: Path, catalog: Path) -> None:
    """--output must be a new or existing file in an existing folder, and never inside the catalog."""
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist", param_hint="--output")
    if output.resolve().is_relative_to(catalog.resolve()):
        raise click.BadParameter(f"{output} is inside the catalog {catalog}; write results outside it",
                                 param_hint="--output")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the running statement like Ctrl-C (the session interrupts DuckDB)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner's thread): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_result(schema, batches, fmt: str, output: Path | None, max_rows: int) -> None:
    """Stream the result's batches to a Parquet file, or as text (table, json, csv) to `output` or stdout.

    A file is written beside `output` and renamed onto it when complete, so a failed, stopped or
    out-of-space statement leaves no half-written file (and an existing one untouched)."""
    if output is None:
        _write_text(schema, batches, fmt, sys.stdout, max_rows)
        return
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(partial, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
        else:
            with open(partial, "w", newline="") as out:
                _write_text(schema, batches, fmt, out, max_rows)
        os.replace(partial, output)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
