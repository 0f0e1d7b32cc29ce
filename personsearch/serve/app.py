"""The person-search web app: a page to draw a box around a person and browse ranked scenes,
and the JSON API under it (FastAPI; schema at /openapi.json, interactive docs at /docs).

    app = create_app("gallery.index")            # baseline embedder; run_dir= for a trained run
    uvicorn.run(app, host="127.0.0.1", port=8000)

Safety, by construction:
- A client names an indexed image by its integer id, never by a path: the files the app can read
  are the images the index holds (see `catalog`). Static assets come from the package only.
- Uploads are bounded in bytes (the whole request body is counted, Content-Length or not) and in
  pixels (checked from the header before decoding), and only JPEG/PNG/WebP/BMP are decoded.
- With a token, every /api route but /api/health needs `Authorization: Bearer <token>`.
- Host headers are checked against `allowed_hosts` (loopback names by default), so a web page
  elsewhere cannot reach a loopback server by DNS rebinding.
- Every error is JSON: {"error": <kind>, "message": <what went wrong and what to do>}.

The searcher (embedder + FAISS index + its SQLite connection) lives on one worker thread: its
SQLite connection may only be used by the thread that opened it, and searches are serialised
there. Thumbnails and metadata are served from other threads through a read-only catalog.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at
# run time, and the routes are closures inside create_app.

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from personsearch import __version__
from personsearch.data.images import read_rgb
from personsearch.errors import ImageError, PersonSearchError
from personsearch.search.index import SearchHit
from personsearch.search.pipeline import open_searcher
from personsearch.search.searcher import PersonSearcher, validate_box
from personsearch.serve.catalog import CatalogImage, IndexCatalog
from personsearch.serve.imaging import (
    BytesLRU,
    FileStamp,
    ImageRejected,
    decode_upload,
    render_jpeg,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small form fields
IMAGE_CACHE_CONTROL = "private, max-age=3600"  # private: the API may sit behind a token
THUMBNAIL_SIZES = (32, 640)  # bounds of the thumbnail's longer side, in pixels
# The page loads nothing from elsewhere; /docs (Swagger UI from a CDN) is left without a CSP.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  #: uploads; a 40 MP image decodes to 120 MB of RGB
    max_gallery_pixels: int = 200_000_000  #: indexed images are trusted more, not unboundedly
    max_top_k: int = 100
    cache_bytes: int = 64 * 1024 * 1024  #: rendered thumbnails and scenes kept in memory


# ---- response models (they make the OpenAPI schema) ------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="kind of error, e.g. not_found, payload_too_large")
    message: str = Field(description="what went wrong, and what to do about it")


class Health(BaseModel):
    status: str
    version: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_top_k: int


class Stats(BaseModel):
    index: str = Field(description="name of the index folder")
    images: int = Field(description="images indexed successfully")
    failed_images: int = Field(description="images that could not be read when indexing")
    persons: int = Field(description="person boxes indexed")
    cameras: list[int] = Field(description="camera ids known to the index (empty: unknown)")
    model: str = Field(description="fingerprint of the embedder that built the index")
    pipeline: str | None = None
    index_kind: str
    dim: int
    limits: Limits


class ImageInfo(BaseModel):
    id: int
    name: str = Field(description="file name (without its folder)")
    width: int
    height: int
    camera: int = Field(description="-1 where unknown")
    persons: int


class ImagePage(BaseModel):
    total: int
    offset: int
    images: list[ImageInfo]


class PersonBox(BaseModel):
    row: int = Field(description="the person's feature row in the index")
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the full image")
    det_score: float


class ImageDetail(ImageInfo):
    boxes: list[PersonBox]


class Hit(BaseModel):
    rank: int
    image: ImageInfo
    row: int
    box: list[float] = Field(description="the matched person: x1, y1, x2, y2 in pixels")
    similarity: float = Field(description="cosine similarity of the two persons' features")
    det_score: float


class Probe(BaseModel):
    width: int
    height: int
    box: list[float] | None = Field(description="the probe person's box; null: the whole image")
    image_id: int | None = Field(description="the indexed image searched with, if any")


class SearchResult(BaseModel):
    probe: Probe
    results: list[Hit]
    took_ms: float


class IndexedSearch(BaseModel):
    image_id: int = Field(ge=1, description="id of an indexed image")
    box: list[float] | None = Field(
        None, min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels; null: whole image"
    )
    top_k: int = Field(10, ge=1)
    cameras: list[int] | None = Field(None, description="only persons seen by these cameras")


ImageId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="an indexed image's id")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422)
}
JPEG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "JPEG image"},
    304: {"description": "not modified (ETag matched)"},
}


# ---- the searcher on its own thread ----------------------------------------------------------


class SearchService:
    """Owns the searcher on one worker thread (see the module docstring for why)."""

    def __init__(self, index_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="personsearch")
        try:
            self._searcher = self._executor.submit(_open_prepared, index_dir, run_dir).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(searcher, *args, **kwargs) on the worker thread."""
        loop = asyncio.get_running_loop()
        job = functools.partial(fn, self._searcher, *args, **kwargs)
        return await loop.run_in_executor(self._executor, job)

    @property
    def meta(self) -> dict[str, str]:
        return self._searcher.index.meta  # a copy made at opening: safe from any thread

    def close(self) -> None:
        self._executor.submit(self._searcher.close).result()
        self._executor.shutdown()


def _open_prepared(index_dir: str | os.PathLike[str], run_dir: Any) -> PersonSearcher:
    searcher = open_searcher(index_dir, run_dir)
    searcher.index.prepare()  # build or load the FAISS index now, not on the first request
    return searcher


# ---- request guard: body size, host header, security headers ---------------------------------


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit:,} bytes")


class RequestGuard:
    """ASGI middleware: caps request bodies, checks the Host header, adds security headers.

    The body is counted as it arrives, so a client that sends no (or a false) Content-Length
    is cut off at the limit too.
    """

    def __init__(self, app: Any, max_body_bytes: int, allowed_hosts: Sequence[str] | None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = _host_name(headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _send_error(send, 400, f"host {host!r} is not served here; use 127.0.0.1")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send, 413, str(BodyTooLarge(self.max_body_bytes).detail))
            return
        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        docs = scope["path"].startswith("/docs") or scope["path"].startswith("/redoc")

        async def secured_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if not docs:
                    extra.append((b"content-security-policy", PAGE_CSP.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, counted_receive, secured_send)


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _send_error(send: Any, status: int, message: str) -> None:
    response = error_response(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    kind = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


# ---- the app ---------------------------------------------------------------------------------


def create_app(
    index_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    *,
    token: str | None = None,
    limits: ServeLimits | None = None,
    allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
) -> FastAPI:
    """The web app over the gallery index at `index_dir`.

    The searcher is the one `personsearch search` uses: `run_dir`'s embedder, or the baseline's;
    an index built by another model is refused here, before anything is served. `token`, when
    given, is required by every /api route except /api/health. `allowed_hosts` None accepts any
    Host header (for a server behind a proxy, or bound to a public address with a token).
    """
    limits = limits or ServeLimits()
    if token is not None and len(token) < 8:
        raise PersonSearchError("the access token must be at least 8 characters long")
    service = SearchService(index_dir, run_dir)
    try:
        catalog = IndexCatalog(index_dir)
    except BaseException:
        service.close()
        raise
    cache = BytesLRU(limits.cache_bytes)
    index_name = Path(index_dir).resolve().name

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(service.close)
        catalog.close()

    app = FastAPI(
        title="personsearch",
        version=__version__,
        summary="Find a person in a gallery of scene images: draw a box, browse ranked scenes.",
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestGuard,
        max_body_bytes=limits.max_upload_bytes + FORM_OVERHEAD_BYTES,
        allowed_hosts=allowed_hosts,
    )
    _add_error_handlers(app)
    api = APIRouter(prefix="/api", responses=ERROR_RESPONSES)
    guarded = APIRouter(dependencies=[Depends(_token_check(token))])

    @api.get("/health", response_model=Health, tags=["server"])
    def health() -> Health:
        """Liveness: answers without a token."""
        return Health(status="ok", version=__version__)

    @guarded.get("/stats", response_model=Stats, tags=["index"])
    def stats() -> Stats:
        """What the index holds, the cameras it knows, and this server's limits."""
        found = catalog.stats()
        return Stats(
            index=index_name,
            images=found.images,
            failed_images=found.failed_images,
            persons=found.persons,
            cameras=found.cameras,
            model=found.meta.get("fingerprint", ""),
            pipeline=found.meta.get("pipeline"),
            index_kind=found.meta.get("index_kind", ""),
            dim=int(found.meta.get("dim", 0)),
            limits=Limits(
                max_upload_bytes=limits.max_upload_bytes,
                max_pixels=limits.max_pixels,
                max_top_k=limits.max_top_k,
            ),
        )

    @guarded.get("/images", response_model=ImagePage, tags=["index"])
    def list_images(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 60,
        camera: Annotated[int | None, Query(description="only this camera's images")] = None,
    ) -> ImagePage:
        """A page of the indexed images, in id order."""
        total, images = catalog.list_images(offset, limit, camera)
        return ImagePage(total=total, offset=offset, images=[_info(i) for i in images])

    @guarded.get("/images/{image_id}", response_model=ImageDetail, tags=["index"])
    def image_detail(image_id: ImageId) -> ImageDetail:
        """An indexed image and the person boxes found in it."""
        image = _known_image(catalog, image_id)
        boxes = [
            PersonBox(row=b.row, box=list(b.box), det_score=b.det_score)
            for b in catalog.boxes(image_id)
        ]
        return ImageDetail(**_info(image).model_dump(), boxes=boxes)

    def jpeg(request: Request, image_id: int, max_side: int | None) -> Response:
        found = catalog.image_and_path(image_id)
        if found is None:
            raise HTTPException(404, _unknown_image(image_id))
        image, path = found
        stamp = FileStamp.of(path)
        if stamp is None:
            raise HTTPException(404, f"image {image_id} is in the index but its file is gone")
        kind = "scene" if max_side is None else f"thumb{max_side}"
        etag = f'"{kind}-{image_id}-{stamp.mtime_ns}-{stamp.size}"'
        headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        data = cache.get_or_make(
            (kind, image_id, stamp),
            lambda: render_jpeg(path, max_side, limits.max_gallery_pixels, image.name),
        )
        return Response(data, media_type="image/jpeg", headers=headers)

    @guarded.get(
        "/images/{image_id}/scene",
        response_class=Response,
        responses=JPEG_RESPONSE,
        tags=["index"],
    )
    def scene(request: Request, image_id: ImageId) -> Response:
        """The full scene image, re-encoded as JPEG (boxes are in its pixel coordinates)."""
        return jpeg(request, image_id, None)

    @guarded.get(
        "/images/{image_id}/thumbnail",
        response_class=Response,
        responses=JPEG_RESPONSE,
        tags=["index"],
    )
    def thumbnail(
        request: Request,
        image_id: ImageId,
        size: Annotated[int, Query(ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1])] = 320,
    ) -> Response:
        """The scene fitted into size x size pixels (never enlarged), as JPEG."""
        return jpeg(request, image_id, size)

    async def search(
        probe: np.ndarray | Path,
        box: list[float] | None,
        top_k: int,
        cameras: list[int] | None,
        image_id: int | None = None,
    ) -> SearchResult:
        if top_k > limits.max_top_k:
            raise HTTPException(422, f"top_k must be at most {limits.max_top_k}, got {top_k}")
        started = time.perf_counter()
        exclude = [] if isinstance(probe, np.ndarray) else [str(probe)]
        if not isinstance(probe, np.ndarray):  # decoded here, not on the searcher's thread
            try:
                probe = await run_in_threadpool(read_rgb, probe)
            except ImageError:  # the indexed probe's file went away: say so without its path
                raise HTTPException(404, f"image {image_id} cannot be read now") from None
        height, width = probe.shape[:2]
        used_box = None if box is None else validate_box(box, width, height).tolist()
        hits = await service.call(_rank, probe, used_box, top_k, cameras, exclude)
        took_ms = (time.perf_counter() - started) * 1000
        images = await run_in_threadpool(catalog.images_by_path, [h.image_path for h in hits])
        return SearchResult(
            probe=Probe(width=width, height=height, box=used_box, image_id=image_id),
            results=[
                Hit(
                    rank=rank,
                    image=_info(images[hit.image_path]),
                    row=hit.row,
                    box=list(hit.box),
                    similarity=hit.similarity,
                    det_score=hit.det_score,
                )
                for rank, hit in enumerate(hits, 1)
                if hit.image_path in images
            ],
            took_ms=round(took_ms, 2),
        )

    @guarded.post("/search/upload", response_model=SearchResult, tags=["search"])
    async def search_upload(
        file: Annotated[UploadFile, File(description="probe image: JPEG, PNG, WebP or BMP")],
        box: Annotated[
            str | None, Form(description="x1,y1,x2,y2 in pixels of the image; empty: whole image")
        ] = None,
        top_k: Annotated[int, Form(ge=1, le=limits.max_top_k)] = 10,
        camera: Annotated[
            list[int] | None, Form(description="only persons seen by this camera (repeatable)")
        ] = None,
    ) -> SearchResult:
        """Search with a person in an uploaded image."""
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(
                413, f"the upload is larger than the limit of {limits.max_upload_bytes:,} bytes"
            )
        image = await run_in_threadpool(decode_upload, data, limits.max_pixels)
        return await search(image, _parse_box(box), top_k, camera)

    @guarded.post("/search/indexed", response_model=SearchResult, tags=["search"])
    async def search_indexed(request_body: IndexedSearch) -> SearchResult:
        """Search with a person in an indexed image; that image's own persons are left out."""
        found = await run_in_threadpool(catalog.image_and_path, request_body.image_id)
        if found is None:
            raise HTTPException(404, _unknown_image(request_body.image_id))
        return await search(
            found[1],
            request_body.box,
            request_body.top_k,
            request_body.cameras,
            image_id=request_body.image_id,
        )

    api.include_router(guarded)
    app.include_router(api)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _rank(
    searcher: PersonSearcher,
    image: np.ndarray,
    box: list[float] | None,
    top_k: int,
    cameras: list[int] | None,
    exclude_paths: list[str],
) -> list[SearchHit]:
    """On the searcher's thread: embed the probe person, rank the gallery's persons."""
    feature = searcher.embed_probe(image, box)
    return searcher.index.search_one(feature, top_k, cameras=cameras, exclude_paths=exclude_paths)


def _parse_box(text: str | None) -> list[float] | None:
    if text is None or not text.strip():
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise HTTPException(422, f"box {text!r} must be four numbers x1,y1,x2,y2")
    return values


def _info(image: CatalogImage) -> ImageInfo:
    return ImageInfo(
        id=image.id,
        name=image.name,
        width=image.width,
        height=image.height,
        camera=image.camera,
        persons=image.persons,
    )


def _known_image(catalog: IndexCatalog, image_id: int) -> CatalogImage:
    image = catalog.image(image_id)
    if image is None:
        raise HTTPException(404, _unknown_image(image_id))
    return image


def _unknown_image(image_id: int) -> str:
    return f"no indexed image has id {image_id}; list them with GET /api/images"


def _token_check(token: str | None) -> Callable[..., Awaitable[None]]:
    bearer = HTTPBearer(auto_error=False, description="the token given to `personsearch serve`")

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401,
                "this server needs an access token: send 'Authorization: Bearer <token>', or "
                "open the page with the link `personsearch serve` printed",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = "no such page or API route; the API is described at /docs"
        if error.status_code == 405:
            message = "this method is not allowed here; the API is described at /docs"
        return error_response(error.status_code, message, dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> Response:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(ImageRejected)
    async def rejected_image(_: Request, error: ImageRejected) -> Response:
        return error_response(error.status, error.message)

    @app.exception_handler(PersonSearchError)
    async def search_error(_: Request, error: PersonSearchError) -> Response:
        return error_response(422, str(error))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> Response:
        log.exception("unexpected error while serving a request", exc_info=error)
        return error_response(500, "internal error; the server log has the details")
