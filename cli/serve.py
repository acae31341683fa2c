"""`simdex serve`: parse, call `simdex.serve.run`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="serve")
@click.option("--catalog", "-c", "catalog", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Catalog folder with a build (`simdex build`).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the service to the network (it has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="TCP port.")
@click.option("--no-model", is_flag=True, help="Do not load the catalog's model: queries by id, vector and SQL only "
              "(starts without importing torch).")
@click.option("--torch-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads of one model run (requests run side by side).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Searches computed at once; more requests wait their turn (each answer says how long in "
                   "queue_ms).  [default: the number of cores]")
def serve(catalog: Path, host: str, port: int, no_model: bool, torch_threads: int, workers: int | None) -> None:
    """Serve a catalog: a JSON API and a search page, with the model and the build loaded once.

    The page is at http://HOST:PORT/, the API under /api (described at /docs and
    /openapi.json): search by object id(s), uploaded image(s), a box in an image or raw
    feature vectors, with k, where, membership, τ, Ω, exact and explain; thumbnails;
    build and catalog info; read-only SQL. A build published by `simdex build` while the
    service runs is picked up at once, without a restart and without a failed request.

    \b
    Examples:
      simdex serve --catalog cat/                          # http://127.0.0.1:8080/
      curl -s localhost:8080/api/search -H 'content-type: application/json' -d '{"ids": [42], "k": 5}'
      curl -s localhost:8080/api/search/image -F image=@boot.png -F k=5
      curl -s localhost:8080/api/search/image -F image=@street.png -F box=40,10,120,90
      curl -s localhost:8080/api/sql -H 'content-type: application/json' \\
           -d '{"statement": "SELECT label, count(*) FROM objects GROUP BY 1"}'
    """
    from simdex.serve import ServiceError, run

    def ready(service) -> None:
        info = service.info()
        click.echo(f"serving {catalog} (build {info['build']['version']}, {info['build']['objects']:,} objects"
                   f"{'' if info['model']['loaded'] else '; queries by image off: ' + str(info['model']['error'])})"
                   f" at http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)", err=True)

    try:
        run(catalog, host=host, port=port, load_model=not no_model, torch_threads=torch_threads, workers=workers,
            on_ready=ready, log_level="warning")
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
