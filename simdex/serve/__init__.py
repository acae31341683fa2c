"""`simdex serve`: a catalog as a query service and a page (needs the `serve` extra: FastAPI, uvicorn).

`service.py` answers (no HTTP), `app.py` maps HTTP onto it, `static/` is the page. `run`
is what the command calls.

Example:
    >>> from simdex.serve import CatalogService, create_app          # doctest: +SKIP
    >>> app = create_app(CatalogService.open("cat/"))                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os

from simdex.serve.service import CatalogService, ServiceError

__all__ = ["CatalogService", "ServiceError", "create_app", "run"]

log = logging.getLogger(__name__)


def create_app(service: CatalogService):
    """The FastAPI app over `service` (imports FastAPI only when called)."""
    from simdex.serve.app import create_app as _create_app

    return _create_app(service)


def run(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080, load_model: bool = True,
        torch_threads: int = 1, workers: int | None = None, log_level: str = "info", on_ready=None) -> None:
    """Serve the catalog at `root` on http://host:port until interrupted.

    Raises:
        ServiceError: not a catalog, no build yet, or the serve extra is not installed.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ServiceError("simdex serve needs FastAPI and uvicorn: pip install 'simdex[serve]'") from None
    _check_can_listen(host, port)
    service = CatalogService.open(root, load_model=load_model, torch_threads=torch_threads, workers=workers)
    if on_ready is not None:
        on_ready(service)
    # HTTP runs on uvicorn's event loop; searches in FastAPI's thread pool, `workers` of them computing at once
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=False)


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one line before loading anything when the address is taken or unknown."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServiceError(f"cannot listen on {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
