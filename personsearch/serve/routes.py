"""The web app's routes, by group, each registered by one function on the router it is given:
the server (/api/health), the index (/api/stats, /api/images...), its images as JPEG (scene,
thumbnail), the searches (/api/search/...), and the page with its static assets.

The searcher (embedder + FAISS index + its SQLite connection) lives on one worker thread
(`SearchService`): its SQLite connection may only be used by the thread that opened it, and
searches are serialised there. Thumbnails and metadata are served from other threads through a
read-only catalog. A client names an indexed image by its integer id, never by a path.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at
# run time, and the routes are closures over what they serve.

import asyncio
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from personsearch import __version__
from personsearch.search.index import SearchHit
from personsearch.search.pipeline import open_searcher
from personsearch.search.searcher import PersonSearcher
from personsearch.serve.catalog import CatalogImage, IndexCatalog
from personsearch.serve.decoding import (
    ProbeImage,
    decode_probe,
    open_indexed_probe,
    open_upload_probe,
    open_video_frame_probe,
    render_plan,
)
from personsearch.serve.imaging import BytesLRU, FileStamp, render_jpeg, render_video_frame
from personsearch.serve.limits import DecodeBudget, ServeLimits, check_top_k, read_upload
from personsearch.serve.schemas import (
    INT64_MAX,
    INT64_MIN,
    JPEG_RESPONSE,
    MAX_CAMERAS,
    THUMBNAIL_SIZES,
    VIDEO_TYPES,
    CameraId,
    FrameTime,
    Health,
    Hit,
    ImageDetail,
    ImageId,
    ImageInfo,
    ImagePage,
    IndexedSearch,
    Limits,
    PersonBox,
    Probe,
    SearchResult,
    Stats,
    VideoPlace,
    VideoTicket,
    parse_box,
)
from personsearch.serve.tickets import VideoTickets

STATIC_DIR = Path(__file__).resolve().parent / "static"
IMAGE_CACHE_CONTROL = "private, max-age=3600"  # private: the API may sit behind a token


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
        return self._searcher.index.store.meta  # a copy made at opening: safe from any thread

    def close(self) -> None:
        self._executor.submit(self._searcher.close).result()
        self._executor.shutdown()


def _open_prepared(index_dir: str | os.PathLike[str], run_dir: Any) -> PersonSearcher:
    searcher = open_searcher(index_dir, run_dir)
    searcher.index.prepare()  # build or load the FAISS index now, not on the first request
    return searcher


def _rank(
    searcher: PersonSearcher,
    person: np.ndarray,
    top_k: int,
    cameras: list[int] | None,
    exclude_paths: list[str],
    per_track: bool = True,
) -> list[SearchHit]:
    """On the searcher's thread: embed the probe person (already cut out), rank the gallery's."""
    feature = searcher.embed_probe(person)
    return searcher.index.search_one(
        feature, top_k, cameras=cameras, exclude_paths=exclude_paths, per_track=per_track
    )


@dataclass(frozen=True)
class Served:
    """What the routes serve from, shared by every request."""

    service: SearchService
    catalog: IndexCatalog
    limits: ServeLimits
    cache: BytesLRU  #: rendered thumbnails and scenes
    budget: DecodeBudget
    index_name: str  #: the index folder's name (never its path)
    tickets: VideoTickets = field(default_factory=VideoTickets)


# ---- the server and the index ----------------------------------------------------------------


def add_health_route(router: APIRouter) -> None:
    """GET /health, which answers without a token (register it on an unguarded router)."""

    @router.get("/health", response_model=Health, tags=["server"])
    def health() -> Health:
        """Liveness: answers without a token."""
        return Health(status="ok", version=__version__)


def add_index_routes(router: APIRouter, served: Served) -> None:
    """GET /stats, /images (a page of them) and /images/{image_id} (one, with its boxes)."""
    catalog, limits = served.catalog, served.limits

    @router.get("/stats", response_model=Stats, tags=["index"])
    def stats() -> Stats:
        """What the index holds, the cameras it knows, and this server's limits."""
        found = catalog.stats()
        return Stats(
            index=served.index_name,
            images=found.images,
            videos=found.videos,
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
                decode_budget_pixels=limits.decode_budget_pixels,
                decode_wait_s=limits.decode_wait_s,
            ),
        )

    @router.get("/images", response_model=ImagePage, tags=["index"])
    def list_images(
        offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 60,
        camera: Annotated[
            int | None, Query(ge=INT64_MIN, le=INT64_MAX, description="only this camera's images")
        ] = None,
    ) -> ImagePage:
        """A page of the indexed images, in id order."""
        total, images = catalog.list_images(offset, limit, camera)
        return ImagePage(total=total, offset=offset, images=[_info(i) for i in images])

    @router.get("/images/{image_id}", response_model=ImageDetail, tags=["index"])
    def image_detail(image_id: ImageId, t: FrameTime = None) -> ImageDetail:
        """An indexed image and the person boxes found in it; for a video, the boxes of its
        sampled frame nearest `t` seconds (default 0), and that frame's time as `time_s`."""
        image = _known_image(catalog, image_id)
        time_s = None
        if image.video:
            time_s, found = catalog.frame_boxes(image_id, t or 0.0)
        else:
            found = catalog.boxes(image_id)
        boxes = [PersonBox(row=b.row, box=list(b.box), det_score=b.det_score) for b in found]
        return ImageDetail(**_info(image).model_dump(), boxes=boxes, time_s=time_s)


# ---- indexed images as JPEG ------------------------------------------------------------------


def add_image_routes(router: APIRouter, served: Served) -> None:
    """GET /images/{image_id}/scene and /images/{image_id}/thumbnail, as JPEG with an ETag; for
    a video, /images/{image_id}/frame (one frame as JPEG) and /images/{image_id}/video (the
    file, with HTTP range requests so that a player can seek)."""

    @router.get(
        "/images/{image_id}/scene",
        response_class=Response,
        responses=JPEG_RESPONSE,
        tags=["index"],
    )
    async def scene(request: Request, image_id: ImageId) -> Response:
        """The full scene image, re-encoded as JPEG (boxes are in its pixel coordinates); a
        scene larger than the server's scene limit (8192 px a side by default) comes
        downscaled to fit it, in the same proportions."""
        return await send_jpeg(served, request, image_id, None)

    @router.get(
        "/images/{image_id}/thumbnail",
        response_class=Response,
        responses=JPEG_RESPONSE,
        tags=["index"],
    )
    async def thumbnail(
        request: Request,
        image_id: ImageId,
        size: Annotated[int, Query(ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1])] = 320,
    ) -> Response:
        """The scene fitted into size x size pixels (never enlarged), as JPEG (a video: its
        first frame)."""
        return await send_jpeg(served, request, image_id, size)

    @router.get(
        "/images/{image_id}/frame",
        response_class=Response,
        responses=JPEG_RESPONSE,
        tags=["index"],
    )
    async def video_frame(
        request: Request,
        image_id: ImageId,
        t: FrameTime = None,
        size: Annotated[int | None, Query(ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1])] = None,
    ) -> Response:
        """The frame of an indexed video shown at `t` seconds (the one a hit's time_s names),
        as JPEG: whole, or fitted into size x size pixels. 404 for a still image."""
        return await send_jpeg(served, request, image_id, size, time_s=t or 0.0, video_only=True)

    @router.get(
        "/images/{image_id}/video",
        response_class=FileResponse,
        responses={200: {"description": "the video file"}, 206: {"description": "a byte range"}},
        tags=["index"],
    )
    async def video_file(image_id: ImageId) -> FileResponse:
        """The indexed video file itself, with HTTP range requests (a player seeks with them:
        `<video src=".../video#t=12.5">` plays from 12.5 s). Only indexed videos are served."""
        return await send_video(served, image_id)

    @router.post("/images/{image_id}/video-ticket", response_model=VideoTicket, tags=["index"])
    async def video_ticket(image_id: ImageId) -> VideoTicket:
        """A URL that plays this indexed video without the token, for a `<video>` element
        (which cannot send headers): it opens this one video, for an hour."""
        found = await run_in_threadpool(served.catalog.image_and_path, image_id)
        if found is None:
            raise HTTPException(404, _unknown_image(image_id))
        if not found[0].video:
            raise HTTPException(404, f"image {image_id} is a still image, not a video")
        url, expires = served.tickets.issue(image_id)
        return VideoTicket(url=url, expires=expires)


def add_media_routes(router: APIRouter, served: Served) -> None:
    """GET /media/videos/{image_id}: an indexed video for a `<video>` element, opened by a
    ticket (`personsearch.serve.tickets`) instead of the token."""

    @router.get("/media/videos/{image_id}", response_class=FileResponse, include_in_schema=False)
    async def media_video(
        image_id: ImageId,
        expires: Annotated[int, Query(ge=0, le=INT64_MAX)],
        sig: Annotated[str, Query(min_length=64, max_length=64)],
    ) -> FileResponse:
        if not served.tickets.valid(image_id, expires, sig):
            raise HTTPException(403, "this video ticket is not valid (expired?): ask for another")
        return await send_video(served, image_id)


async def send_video(served: Served, image_id: int) -> FileResponse:
    """An indexed video file, with range requests (FileResponse answers them: 206)."""
    found = await run_in_threadpool(served.catalog.image_and_path, image_id)
    if found is None:
        raise HTTPException(404, _unknown_image(image_id))
    image, path = found
    if not image.video:
        raise HTTPException(404, f"image {image_id} is a still image, not a video")
    if not await run_in_threadpool(path.is_file):
        raise HTTPException(404, f"video {image_id} is in the index but its file is gone")
    return FileResponse(
        path,
        media_type=VIDEO_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        headers={"Cache-Control": IMAGE_CACHE_CONTROL},
    )


async def send_jpeg(
    served: Served,
    request: Request,
    image_id: int,
    max_side: int | None,
    time_s: float = 0.0,
    video_only: bool = False,
) -> Response:
    """An indexed image (a video: its frame at `time_s`) as JPEG, fitted into `max_side` (None:
    the scene, within the scene limit): 304 when the client's ETag still matches, else from the
    cache, else rendered within the decode budget."""
    catalog, limits = served.catalog, served.limits
    found = await run_in_threadpool(catalog.image_and_path, image_id)
    if found is None:
        raise HTTPException(404, _unknown_image(image_id))
    image, path = found
    if video_only and not image.video:
        raise HTTPException(404, f"image {image_id} is a still image, not a video")
    stamp = await run_in_threadpool(FileStamp.of, path)
    if stamp is None:
        raise HTTPException(404, f"image {image_id} is in the index but its file is gone")
    kind = "scene" if max_side is None else f"thumb{max_side}"
    if image.video:
        kind += f"-t{time_s:.3f}"
    etag = f'"{kind}-{image_id}-{stamp.mtime_ns}-{stamp.size}"'
    headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    key = (kind, image_id, stamp)
    try:
        data = served.cache.get_or_make(key, _cache_miss)
    except _CacheMiss:
        side, pixels = await run_in_threadpool(
            render_plan, path, max_side, image.width * image.height, limits
        )
        async with served.budget.reserve(pixels, limits.decode_wait_s):
            if image.video:
                data = await run_in_threadpool(
                    render_video_frame, path, time_s, side, limits.max_gallery_pixels, image.name
                )
            else:
                data = await run_in_threadpool(
                    render_jpeg, path, side, limits.max_gallery_pixels, image.name
                )
        data = served.cache.get_or_make(key, lambda: data)
    return Response(data, media_type="image/jpeg", headers=headers)


class _CacheMiss(Exception):
    pass


def _cache_miss() -> bytes:
    raise _CacheMiss


# ---- searches --------------------------------------------------------------------------------


def add_search_routes(router: APIRouter, served: Served) -> None:
    """POST /search/upload (a person in an uploaded image) and /search/indexed (in an indexed
    one)."""
    catalog, limits = served.catalog, served.limits

    @router.post("/search/upload", response_model=SearchResult, tags=["search"])
    async def search_upload(
        file: Annotated[UploadFile, File(description="probe image: JPEG, PNG, WebP or BMP")],
        box: Annotated[
            str | None, Form(description="x1,y1,x2,y2 in pixels of the image; empty: whole image")
        ] = None,
        top_k: Annotated[int, Form(ge=1, le=limits.max_top_k)] = 10,
        camera: Annotated[
            list[CameraId] | None,
            Form(
                max_length=MAX_CAMERAS,
                description="only persons seen by this camera (repeatable)",
            ),
        ] = None,
        every_frame: Annotated[
            bool, Form(description="videos: a hit per sampled frame, not per track")
        ] = False,
    ) -> SearchResult:
        """Search with a person in an uploaded image. A person seen in a video is one hit (the
        best frame of their track) unless every_frame is set."""
        data = await read_upload(file, limits)
        probe = await run_in_threadpool(open_upload_probe, data, parse_box(box), limits)
        del data
        return await run_search(served, probe, top_k, camera, per_track=not every_frame)

    @router.post("/search/indexed", response_model=SearchResult, tags=["search"])
    async def search_indexed(request_body: IndexedSearch) -> SearchResult:
        """Search with a person in an indexed image, or in the frame at `time_s` of an indexed
        video; that image's (video's) own persons are left out."""
        image_id = request_body.image_id
        found = await run_in_threadpool(catalog.image_and_path, image_id)
        if found is None:
            raise HTTPException(404, _unknown_image(image_id))
        image, path = found
        if image.video:
            if request_body.time_s is None:
                raise HTTPException(
                    400, f"image {image_id} is a video: give the frame's time_s to search from"
                )
            # a video frame has no header to plan from: it is decoded here, within the budget
            async with served.budget.reserve(image.width * image.height, limits.decode_wait_s):
                probe = await run_in_threadpool(
                    open_video_frame_probe,
                    path,
                    image_id,
                    request_body.time_s,
                    request_body.box,
                    limits,
                )
        else:
            probe = await run_in_threadpool(
                open_indexed_probe, path, image_id, request_body.box, limits
            )
        return await run_search(
            served,
            probe,
            request_body.top_k,
            request_body.cameras,
            image_id=image_id,
            exclude=[str(path)],
            per_track=not request_body.every_frame,
        )


async def run_search(
    served: Served,
    probe: ProbeImage,
    top_k: int,
    cameras: list[int] | None,
    image_id: int | None = None,
    exclude: list[str] | None = None,
    per_track: bool = True,
) -> SearchResult:
    """Decode the probe within the decode budget, then rank on the searcher's thread; the
    budget holds the probe's pixels until the ranking is done."""
    limits = served.limits
    try:
        check_top_k(top_k, limits)
        started = time.perf_counter()
        async with served.budget.reserve(probe.decode_pixels, limits.decode_wait_s) as held:
            person = await run_in_threadpool(decode_probe, probe)
            held.shrink(person.shape[0] * person.shape[1])
            hits = await served.service.call(
                _rank, person, top_k, cameras, exclude or [], per_track
            )
            del person
    finally:
        probe.close()
    took_ms = (time.perf_counter() - started) * 1000
    images = await run_in_threadpool(served.catalog.images_by_path, [h.image_path for h in hits])
    width, height = probe.size
    return SearchResult(
        probe=Probe(width=width, height=height, box=probe.box, image_id=image_id),
        results=[
            Hit(
                rank=rank,
                image=_info(images[hit.image_path]),
                row=hit.row,
                box=list(hit.box),
                similarity=hit.similarity,
                det_score=hit.det_score,
                video=_place(hit),
            )
            for rank, hit in enumerate(hits, 1)
            if hit.image_path in images
        ],
        took_ms=round(took_ms, 2),
    )


# ---- the page --------------------------------------------------------------------------------


def add_page_routes(app: FastAPI) -> None:
    """GET / (the page; left out of the API schema) and /static/ (its assets, from the package
    only)."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# ---- catalog records as API bodies -----------------------------------------------------------


def _info(image: CatalogImage) -> ImageInfo:
    return ImageInfo(
        id=image.id,
        name=image.name,
        width=image.width,
        height=image.height,
        camera=image.camera,
        persons=image.persons,
        kind="video" if image.video else "image",
        duration_s=image.duration_s,
    )


def _place(hit: SearchHit) -> VideoPlace | None:
    if hit.frame is None:
        return None
    return VideoPlace(
        frame=hit.frame,
        time_s=hit.time_s,
        track=hit.track if hit.track is not None else -1,
        track_start_s=hit.track_start_s,
        track_end_s=hit.track_end_s,
        track_frames=hit.track_frames,
    )


def _known_image(catalog: IndexCatalog, image_id: int) -> CatalogImage:
    image = catalog.image(image_id)
    if image is None:
        raise HTTPException(404, _unknown_image(image_id))
    return image


def _unknown_image(image_id: int) -> str:
    return f"no indexed image has id {image_id}; list them with GET /api/images"
