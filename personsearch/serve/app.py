"""The person-search web app: a page to draw a box around a person and browse ranked scenes,
and the JSON API under it (FastAPI; schema at /openapi.json, interactive docs at /docs).

    app = create_app("gallery.index")            # baseline embedder; run_dir= for a trained run
    uvicorn.run(app, host="127.0.0.1", port=8000)

`create_app` composes the parts, each with its own module:
- `schemas`: the request and response bodies, and the checks a request's fields get at the edge
  (integers within SQLite's 64-bit range: 422).
- `limits`: what a request may ask. Uploads are bounded in bytes; decoding is bounded across
  requests by a shared budget of pixels (`DecodeBudget`; a request that cannot get its share in
  time is answered 503 with Retry-After).
- `middleware`: what a request must pass. The whole request body is counted, Content-Length or
  not; with a token, every /api route but /api/health needs `Authorization: Bearer <token>`;
  Host headers are checked against `allowed_hosts` (loopback names by default), so a web page
  elsewhere cannot reach a loopback server by DNS rebinding.
- `errors`: every error is JSON, {"error": <kind>, "message": <what went wrong and what to
  do>}, naming files relative to the index, never a server folder (`path_redactor`).
- `allocator`: `personsearch serve` tunes the C allocator so freed image buffers leave the
  process.
- `decoding`: a probe's header is checked (pixels, shape, type: only JPEG/PNG/WebP/BMP uploads)
  before it is decoded, at the scale its box needs, and cut out at once (`decode_probe`);
  scenes larger than `ServeLimits.scene_max_side` are sent downscaled.
- `routes`: the route handlers. A client names an indexed image by its integer id, never by a
  path: the files the app can read are the images the index holds (see `catalog`). Static
  assets come from the package only. The searcher lives on one worker thread
  (`SearchService`); thumbnails and metadata are served from other threads through a
  read-only catalog.
"""

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from personsearch import __version__
from personsearch.errors import PersonSearchError
from personsearch.serve.catalog import IndexCatalog
from personsearch.serve.errors import add_error_handlers, path_redactor
from personsearch.serve.imaging import BytesLRU
from personsearch.serve.limits import FORM_OVERHEAD_BYTES, DecodeBudget, ServeLimits
from personsearch.serve.middleware import LOOPBACK_HOSTS, RequestGuard, token_check
from personsearch.serve.routes import (
    SearchService,
    Served,
    add_health_route,
    add_image_routes,
    add_index_routes,
    add_media_routes,
    add_page_routes,
    add_search_routes,
)
from personsearch.serve.schemas import ERROR_RESPONSES


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
    served = _open_served(index_dir, run_dir, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(served.service.close)
        served.catalog.close()

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
    app.state.decode_budget = served.budget
    add_error_handlers(app, path_redactor(index_dir))
    api = APIRouter(prefix="/api", responses=ERROR_RESPONSES)
    add_health_route(api)  # the one /api route without the token
    guarded = APIRouter(dependencies=[Depends(token_check(token))])
    add_index_routes(guarded, served)
    add_image_routes(guarded, served)
    add_search_routes(guarded, served)
    api.include_router(guarded)
    app.include_router(api)
    media = APIRouter()  # opened by a ticket, not the token: see personsearch.serve.tickets
    add_media_routes(media, served)
    app.include_router(media)
    add_page_routes(app)
    return app


def _open_served(
    index_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None, limits: ServeLimits
) -> Served:
    """The searcher (on its thread) and the catalog over the index; the searcher is closed
    again if the catalog cannot be opened."""
    service = SearchService(index_dir, run_dir)
    try:
        catalog = IndexCatalog(index_dir)
    except BaseException:
        service.close()
        raise
    return Served(
        service=service,
        catalog=catalog,
        limits=limits,
        cache=BytesLRU(limits.cache_bytes),
        budget=DecodeBudget(limits.decode_budget_pixels),
        index_name=Path(index_dir).resolve().name,
    )
