"""The HTTP face of `CatalogService`: a FastAPI app factory, routes that only translate.

Routes parse the request, call one `CatalogService` method and return its answer; a
`ServiceError` becomes its status with `{"detail": "<one line>"}`, and so does a request
that does not validate (422). The page (`static/`) is served at `/`, the OpenAPI
description at `/openapi.json`, its browsable form at `/docs`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import Body, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from simdex import __version__
from simdex.serve.service import MAX_K, MAX_SQL_ROWS, MAX_UPLOAD_BYTES, CatalogService, ServiceError

STATIC = resources.files("simdex.serve") / "static"


class SearchOptions(BaseModel):
    k: int = Field(10, ge=1, le=MAX_K, description="Number of results.")
    where: str | None = Field(None, description="SQL predicate on the objects' metadata, e.g. label = 'Sneaker'.")
    membership: str = Field("auto", description="auto, gaussian (eq. 2), trapezoid (eq. 3), triangle or max.")
    tau: float | None = Field(None, gt=0, description="Width τ of the membership in standard deviations "
                                                       "(default: the build's).")
    omega: str | None = Field(None, description="Feature weights Ω: uniform, svd, clusters, welch, learned "
                                                "(those the build stored), or a label column's Ω (e.g. instance: "
                                                "the same item); default: the build's.")
    exact: bool = Field(False, description="Scan the whole catalog instead of the candidate index.")
    explain: bool = Field(False, description="Split each P into per-layer parts (they add up to P).")
    candidates: int | None = Field(None, ge=1, le=100_000, description="Candidates reranked exactly per query centre.")


class SearchRequest(SearchOptions):
    ids: list[int] | None = Field(None, description="Query object ids: one (Gaussian) or a set (trapezoid).")
    features: list[list[float]] | None = Field(None, description="Or raw feature vectors of N values each "
                                                                 "(the catalog's model's φ).")


class SqlRequest(BaseModel):
    statement: str = Field(..., description="One SQL statement over the views of `simdex sql`.")
    max_rows: int = Field(1000, ge=1, le=MAX_SQL_ROWS)


def _one_line_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "bad request: " + "; ".join(parts)


def create_app(service: CatalogService) -> FastAPI:
    """The ASGI app serving `service`: JSON API under /api, the page at /, docs at /docs."""
    app = FastAPI(title="simdex", version=__version__, docs_url=None, redoc_url=None,
                  description="Search an image catalog by object id, image, region or feature vector; every "
                              "answer carries its probabilistic similarity P ∈ [0, 1].")
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line_validation(exc)}, status_code=422)

    @app.get("/api/info", summary="The catalog and the build being served")
    def info() -> dict:
        return service.info()

    @app.post("/api/search", summary="Search by object id(s) or raw feature vector(s)", response_class=JSONResponse)
    def search(req: Annotated[SearchRequest, Body()]):
        if bool(req.ids) == bool(req.features):
            raise ServiceError("give `ids` or `features` (one of them)")
        return _json(service.search(ids=req.ids or None, features=req.features, k=req.k, where=req.where,
                              membership=req.membership, tau=req.tau, omega=req.omega, exact=req.exact,
                              explain=req.explain, n_candidates=req.candidates))

    @app.get("/api/search", summary="Search by object id(s), as a GET (ids=42 or ids=42&ids=43)",
             response_class=JSONResponse)
    def search_get(ids: Annotated[list[int], Query()], k: int = Query(10, ge=1, le=MAX_K), where: str | None = None,
                   membership: str = "auto", tau: float | None = Query(None, gt=0), omega: str | None = None,
                   exact: bool = False, explain: bool = False):
        return _json(service.search(ids=ids, k=k, where=where, membership=membership, tau=tau, omega=omega,
                                    exact=exact, explain=explain))

    @app.post("/api/search/image", summary="Search by uploaded image(s), or a box in one", response_class=JSONResponse)
    def search_image(image: Annotated[list[UploadFile], File(description="Image file(s); several form one set.")],
                     box: Annotated[str | None, Form(description="x0,y0,x1,y1 in image pixels: search by this "
                                                                 "region of the (one) image")] = None,
                     k: Annotated[int, Form(ge=1, le=MAX_K)] = 10, where: Annotated[str | None, Form()] = None,
                     membership: Annotated[str, Form()] = "auto",
                     tau: Annotated[float | None, Form(gt=0)] = None, omega: Annotated[str | None, Form()] = None,
                     exact: Annotated[bool, Form()] = False, explain: Annotated[bool, Form()] = False):
        if box and len(image) != 1:
            raise ServiceError("a box selects a region of one image")
        data = [_read_upload(f) for f in image]
        return _json(service.search_images(data, [box] if box else None, k=k, where=where or None,
                                           membership=membership, tau=tau, omega=omega or None, exact=exact,
                                           explain=explain))

    @app.get("/api/objects/{object_id}", summary="An object's metadata")
    def get_object(object_id: int) -> dict:
        from simdex.serve.service import _clean

        return _clean(service.object(object_id))

    @app.get("/api/objects/{object_id}/thumbnail", summary="The object's image as PNG",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def thumbnail(object_id: int, size: int = Query(96, ge=8, le=512)) -> Response:
        return Response(service.thumbnail(object_id, size), media_type="image/png",
                        headers={"Cache-Control": "max-age=60"})

    @app.get("/api/explain", summary="Similarity maps of a query and an answer (JSON: parts of P and maps)")
    def explain(query: Annotated[list[int], Query()], answer: int, membership: str = "auto",
                tau: float | None = Query(None, gt=0), omega: str | None = None) -> dict:
        return service.explain_map(query, answer, membership, tau, omega, picture=False)

    @app.get("/api/explain.png", summary="Similarity maps of a query and an answer, drawn over the images",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def explain_png(query: Annotated[list[int], Query()], answer: int, membership: str = "auto",
                    tau: float | None = Query(None, gt=0), omega: str | None = None) -> Response:
        return Response(service.explain_map(query, answer, membership, tau, omega, picture=True),
                        media_type="image/png")

    @app.post("/api/sql", summary="Read-only SQL over the catalog (the views of `simdex sql`)")
    def sql(req: SqlRequest) -> dict:
        return service.sql(req.statement, req.max_rows)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-py package's files (FastAPI's default loads it from a CDN,
    which an offline machine cannot reach); without that package, /docs says where the description is."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    try:
        import swagger_ui
    except ImportError:
        @app.get("/docs", include_in_schema=False)
        def docs_missing() -> HTMLResponse:
            return HTMLResponse('<p>The API is described at <a href="/openapi.json">/openapi.json</a>; install '
                                "swagger-ui-py (the serve extra) to browse it here.</p>")
        return
    assets = Path(swagger_ui.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="simdex API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="data:,")


def _json(answer: dict) -> Response:
    """The service's answers hold only JSON types already: skip FastAPI's re-encoding (jsonable_encoder took
    0.6 ms of an answer at k = 10, json.dumps 0.06 ms; a search by id at 70k objects computes in ≈ 4 ms)."""
    return Response(json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
                    media_type="application/json")


def _read_upload(f: UploadFile) -> bytes:
    data = f.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ServiceError(f"{f.filename or 'the image'} is larger than {MAX_UPLOAD_BYTES:,} bytes", 413)
    return data
