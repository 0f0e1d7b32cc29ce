"""The person-search web app: a page to draw a box around a person and browse ranked scenes,
and the JSON API under it (FastAPI; schema at /openapi.json, interactive docs at /docs).

    app = create_app("gallery.index")            # baseline embedder; run_dir= for a trained run
    uvicorn.run(app, host="127.0.0.1", port=8000)

Safety, by construction:
- A client names an indexed image by its integer id, never by a path: the files the app can read
  are the images the index holds (see `catalog`). Static assets come from the package only.
- Uploads are bounded in bytes (the whole request body is counted, Content-Length or not) and in
  pixels (checked from the header before decoding), and only JPEG/PNG/WebP/BMP are decoded.
- Decoding is bounded across requests: a shared budget of pixels being decoded (`DecodeBudget`;
  a request that cannot get its share in time is answered 503 with Retry-After). A probe is
  decoded at the scale its box needs and cut out at once (`decode_probe`); scenes larger than
  `ServeLimits.scene_max_side` are sent downscaled.
- Integers are checked against SQLite's 64-bit range at the edge (422), and error messages name
  files relative to the index, never a server folder (`path_redactor`).
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
import ctypes
import functools
import io
import logging
import math
import os
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from personsearch import __version__
from personsearch.data.images import (
    DECODE_ERRORS,
    DECODERS,
    ORIENTATION_TRANSPOSE,
    ImageRefused,
    check_policy,
    flatten_alpha,
    open_image,
    open_stream,
    orientation,
    to_8bit,
)
from personsearch.errors import ImageError, PersonSearchError
from personsearch.search.index import SearchHit
from personsearch.search.pipeline import open_searcher
from personsearch.search.searcher import PersonSearcher, validate_box
from personsearch.serve.catalog import CatalogImage, IndexCatalog
from personsearch.serve.imaging import (
    REFUSED_STATUS,
    BytesLRU,
    FileStamp,
    ImageRejected,
    check_pixels,
    render_jpeg,
    upload_kind,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small form fields
IMAGE_CACHE_CONTROL = "private, max-age=3600"  # private: the API may sit behind a token
THUMBNAIL_SIZES = (32, 640)  # bounds of the thumbnail's longer side, in pixels
JPEG_MAX_SIDE = 65_500  # libjpeg refuses to encode a wider or taller image
# The page loads nothing from elsewhere; /docs (Swagger UI from a CDN) is left without a CSP.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


INT64_MAX = 2**63 - 1  # SQLite's integers are signed 64-bit: ids and cameras must fit
INT64_MIN = -(2**63)
MAX_CAMERAS = 10_000  # cameras one search may filter by
MAX_DECODE_WAIT_S = 600.0


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and all requests together, may ask of the server.

    Decoding is bounded across requests: at most `decode_budget_pixels` pixels are being decoded
    (and held as probes) at once. A request that cannot get its share within `decode_wait_s`
    seconds is answered 503 with Retry-After; an image larger than the whole budget waits for
    all of it and is decoded alone.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  #: uploads; a 40 MP image decodes to 160 MB (4 bytes a pixel)
    max_gallery_pixels: int = 200_000_000  #: indexed images are trusted more, not unboundedly
    max_top_k: int = 100
    cache_bytes: int = 64 * 1024 * 1024  #: rendered thumbnails and scenes kept in memory
    decode_budget_pixels: int = 100_000_000  #: pixels being decoded at once, all requests
    decode_wait_s: float = 3.0  #: longest wait for the decode budget before a 503
    #: Probes are decoded at a reduced scale that keeps at least this many pixels on the longer
    #: side of the person's box (a re-id model looks at 256 x 128 at most).
    probe_detail_px: int = 1024
    scene_max_side: int = 8192  #: larger scenes are sent downscaled to fit this square

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "max_gallery_pixels",
            "max_top_k",
            "decode_budget_pixels",
            "probe_detail_px",
            "scene_max_side",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PersonSearchError(
                    f"serve limit {name} must be a positive integer, got {value!r}"
                )
        if self.cache_bytes < 0:
            raise PersonSearchError(f"serve limit cache_bytes must be >= 0, got {self.cache_bytes}")
        wait = self.decode_wait_s
        if not (
            isinstance(wait, int | float) and math.isfinite(wait) and 0 < wait <= MAX_DECODE_WAIT_S
        ):
            raise PersonSearchError(
                f"serve limit decode_wait_s must be a number of seconds in (0, {MAX_DECODE_WAIT_S:g}], "
                f"got {wait!r}"
            )
        if self.scene_max_side > JPEG_MAX_SIDE:
            raise PersonSearchError(
                f"serve limit scene_max_side must be at most {JPEG_MAX_SIDE} (JPEG's limit), got "
                f"{self.scene_max_side}"
            )


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
    decode_budget_pixels: int = Field(description="pixels decoded at once over all requests")
    decode_wait_s: float = Field(description="longest wait for the decode budget before a 503")


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


CameraId = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class IndexedSearch(BaseModel):
    image_id: int = Field(ge=1, le=INT64_MAX, description="id of an indexed image")
    box: list[float] | None = Field(
        None, min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels; null: whole image"
    )
    top_k: int = Field(10, ge=1)
    cameras: list[CameraId] | None = Field(
        None, max_length=MAX_CAMERAS, description="only persons seen by these cameras"
    )


ImageId = Annotated[int, PathParam(ge=1, le=INT64_MAX, description="an indexed image's id")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 503)
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


# ---- the decode budget: the memory of concurrent decodes -------------------------------------


class BudgetExhausted(Exception):
    """The decode budget stayed full for longer than a request may wait: answered 503."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        retry = max(1, math.ceil(wait_s))
        super().__init__(
            f"the server is busy decoding other images (at most {capacity / 1e6:g} megapixels at "
            f"once) and could not start this one within {wait_s:g} s; retry in {retry} s"
        )
        self.retry_after_s = retry


class DecodeBudget:
    """Pixels being decoded, or held decoded, at once, shared by every request.

    `reserve(pixels, wait_s)` waits, first come first served, until that many pixels of the
    budget are free, at most `wait_s` seconds (then BudgetExhausted). A request for more than
    the whole budget takes all of it: it waits for the others and is decoded alone. Used from
    the event loop only (the decoding itself runs in worker threads while a reservation is held).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.available = self.capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        return self.capacity - self.available

    def cost(self, pixels: int) -> int:
        return min(max(1, int(pixels)), self.capacity)

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int, wait_s: float) -> AsyncIterator["Reservation"]:
        reservation = Reservation(self, self.cost(pixels))
        await self._acquire(reservation.held, wait_s)
        try:
            yield reservation
        finally:
            self._release(reservation.held)
            reservation.held = 0

    async def _acquire(self, cost: int, wait_s: float) -> None:
        if not self._waiters and cost <= self.available:
            self.available -= cost
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((cost, future))
        try:
            async with asyncio.timeout(wait_s):
                await future
        except BaseException as error:  # timed out, or the request was cancelled
            if future.done() and not future.cancelled():
                self._release(cost)  # granted just as the wait ended: give it back
            else:
                future.cancel()
                self._wake()  # it may have been the head of the queue, holding up smaller ones
            if isinstance(error, TimeoutError):
                raise BudgetExhausted(self.capacity, wait_s) from None
            raise

    def _release(self, cost: int) -> None:
        self.available += cost
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            cost, future = self._waiters[0]
            if future.done():  # gave up waiting
                self._waiters.popleft()
                continue
            if cost > self.available:
                return
            self._waiters.popleft()
            self.available -= cost
            future.set_result(None)


@dataclass
class Reservation:
    """Pixels of a DecodeBudget held by one request."""

    budget: DecodeBudget
    held: int

    def shrink(self, pixels: int) -> None:
        """Keep only `pixels` (what stays in memory once the decode is over); free the rest."""
        keep = min(self.held, self.budget.cost(pixels))
        if keep < self.held:
            self.budget._release(self.held - keep)
            self.held = keep


def tune_allocator() -> bool:
    """Make the C allocator give large freed blocks back to the system at once; True where that
    was possible (glibc). Called by `personsearch serve`.

    Decoded images live in blocks of up to 16 MB (Pillow) and arrays of tens of MB. glibc raises
    its mmap threshold after such frees, so later blocks come from its per-thread arenas, which
    keep freed memory: a burst of large decodes left the server holding gigabytes. A fixed 1 MB
    threshold maps every large block and unmaps it when freed; at most 2 arenas per core.
    Measured in docs/serve.md ("Memory under hostile load").
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
    mapped = mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES) == 1
    return mallopt(m_arena_max, 2 * (os.cpu_count() or 1)) == 1 and mapped


MMAP_THRESHOLD_BYTES = 1024 * 1024  # blocks from 1 MB up are mapped, and unmapped when freed


# ---- probes: decoded within the budget, at the scale the search needs ------------------------
#
# The pixels are those of the reading policy (`personsearch.data.images.decode`: orientation,
# 16-bit, palette, alpha, the JPEG decoder's own scaling), but the box is cut out before the
# conversions, so they run on the person only and the whole image is freed at once.

_JPEG = ("JPEG", "MPO")


@dataclass
class ProbeImage:
    """A probe whose header has been read and checked, and whose pixels are not decoded yet.

    `box` is the person's box in full-resolution pixels of the image as shown (EXIF orientation
    applied), validated and clipped; None: the whole image. `factor` is the reduction the
    decode applies: the box's longer side keeps at least `ServeLimits.probe_detail_px` pixels.
    """

    image: Image.Image
    what: str  #: "the uploaded PNG image", "image 7": how messages name it
    upload: bool
    size: tuple[int, int]  #: width, height as shown, full resolution
    box: list[float] | None
    factor: int  #: reduction of the decoded pixels (1: full resolution)
    turn: int  #: EXIF orientation (1: none)
    draft: int  #: JPEG: the decoder's own scale (divides `factor`)
    stream: Any = None  #: a file the image reads from, closed with it
    _closed: bool = field(default=False, repr=False)

    @property
    def decode_pixels(self) -> int:
        """Pixels the decoder holds at once: the whole image at its decoder scale."""
        width, height = self.image.size
        return -(-width // self.draft) * -(-height // self.draft)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.image.close()
            if self.stream is not None:
                self.stream.close()


def open_upload_probe(data: bytes, box: list[float] | None, limits: ServeLimits) -> ProbeImage:
    """An uploaded probe, its header checked (type, pixel and shape policy, box) before any
    pixel is decoded.

    Raises ImageRejected: 400 empty or corrupt, 413 over the pixel limit, 415 not an accepted
    type, 422 more elongated than the reading policy allows; PersonSearchError (422) for a box
    outside the image.
    """
    kind, what = upload_kind(data)
    try:
        image = open_stream(io.BytesIO(data), what, (kind,), limits.max_pixels)
    except ImageRefused as error:
        raise ImageRejected(REFUSED_STATUS[error.reason], str(error)) from None
    except ImageError as error:
        raise ImageRejected(400, str(error)) from None
    try:
        check_pixels(image.size, limits.max_pixels, "the uploaded image")
        check_policy(image.size, what, limits.max_pixels)
        return _plan_probe(image, what, True, box, limits)
    except ImageRefused as error:
        image.close()
        raise ImageRejected(REFUSED_STATUS[error.reason], str(error)) from None
    except BaseException:
        image.close()
        raise


def open_indexed_probe(
    path: Path, image_id: int, box: list[float] | None, limits: ServeLimits
) -> ProbeImage:
    """An indexed image as the probe. A file that cannot be decoded now, or that the policy
    refuses now (it changed since it was indexed), is a 404: "cannot be read now"."""
    what = f"image {image_id}"
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed with the probe
    except OSError:
        raise ImageRejected(404, f"{what} cannot be read now") from None
    try:
        image = open_stream(stream, what, DECODERS, limits.max_gallery_pixels)
    except ImageError as error:
        stream.close()
        raise ImageRejected(404, f"{what} cannot be read now ({error})") from None
    try:
        check_policy(image.size, what, limits.max_gallery_pixels)
        probe = _plan_probe(image, what, False, box, limits)
    except ImageRefused as error:
        image.close()
        stream.close()
        raise ImageRejected(404, f"{what} cannot be read now ({error})") from None
    except BaseException:
        image.close()
        stream.close()
        raise
    probe.stream = stream
    return probe


def _plan_probe(
    image: Image.Image, what: str, upload: bool, box: list[float] | None, limits: ServeLimits
) -> ProbeImage:
    width, height = image.size
    turn = orientation(image)
    shown = (height, width) if turn in (5, 6, 7, 8) else (width, height)
    valid = None if box is None else validate_box(box, *shown, what).tolist()
    x1, y1, x2, y2 = _crop_rect(valid, *shown)
    factor = max(1, max(x2 - x1, y2 - y1) // limits.probe_detail_px)
    draft = 1
    if image.format in _JPEG and factor > 1:
        # Rounded down to what the JPEG decoder scales by itself (1/2, 1/4, 1/8, then multiples
        # of 8), so that the full-size pixels are never held; the box keeps its detail.
        factor = 1 << (factor.bit_length() - 1) if factor < 8 else factor // 8 * 8
        draft = next(s for s in (8, 4, 2, 1) if factor % s == 0 and s <= min(width, height))
    return ProbeImage(image, what, upload, shown, valid, factor, turn, draft)


def decode_probe(probe: ProbeImage) -> np.ndarray:
    """The probe person (its box, or the whole image) as H x W x 3 uint8 RGB, reduced by
    `probe.factor`. The box is cut out right after decoding; the conversions run on it only.

    The pixels are exactly `crop_box(decoded, box / factor)` of the reading policy's
    `decode(image, factor=probe.factor)`, so the feature is the one `PersonSearcher.embed_probe`
    computes from those pixels.
    """
    image = probe.image
    width, height = image.size
    try:
        scale = 1
        if probe.draft > 1:  # the JPEG decoder's own scaling, as `decode` asks for it
            image.draft(None, (width // probe.draft, height // probe.draft))
            for taken in (probe.draft, 8, 4, 2):
                if image.size == (-(-width // taken), -(-height // taken)):
                    scale = taken
                    break
        image.load()
        source = to_8bit(image) if image.mode == "F" else image  # scaled by its own maximum
        rest = max(1, round(probe.factor / scale))
        factor = scale * rest
        # The box in the reduced image as shown, as crop_box cuts it, then in the reduced stored
        # grid, then in the decoded pixels: whole blocks of `rest`, so reducing the cut-out
        # gives exactly the pixels reducing the whole image would.
        shown_w, shown_h = (-(-side // factor) for side in probe.size)
        box = None if probe.box is None else [v / factor for v in probe.box]
        reduced = _crop_rect(box, shown_w, shown_h)
        a, b, c, d = _stored_rect(reduced, probe.turn, -(-width // factor), -(-height // factor))
        drafted_w, drafted_h = image.size
        rect = (a * rest, b * rest, min(c * rest, drafted_w), min(d * rest, drafted_h))
        region = source.crop(rect)
        del source
        probe.close()  # the whole image's pixels go now
        region = to_8bit(region)
        if rest > 1:
            region = region.reduce(rest)
        if probe.turn in ORIENTATION_TRANSPOSE:
            region = region.transpose(ORIENTATION_TRANSPOSE[probe.turn])
        return np.asarray(flatten_alpha(region))
    except DECODE_ERRORS as error:
        if probe.upload:
            raise ImageRejected(400, f"cannot decode {probe.what}: {error}") from None
        raise ImageRejected(404, f"{probe.what} cannot be read now") from None
    finally:
        probe.close()


def _crop_rect(box: list[float] | None, width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels a box covers, as `crop_box` cuts them (the whole image for None)."""
    if box is None:
        return 0, 0, width, height
    x1 = min(max(math.floor(box[0]), 0), width - 1)
    y1 = min(max(math.floor(box[1]), 0), height - 1)
    x2 = max(min(math.ceil(box[2]), width), x1 + 1)
    y2 = max(min(math.ceil(box[3]), height), y1 + 1)
    return x1, y1, x2, y2


def _stored_rect(
    rect: tuple[int, int, int, int], turn: int, width: int, height: int
) -> tuple[int, int, int, int]:
    """A rectangle of the image as shown (EXIF orientation `turn` applied) in the stored image
    of `width` x `height` pixels: cutting it there and transposing gives the shown cut."""
    x1, y1, x2, y2 = rect
    return {
        2: (width - x2, y1, width - x1, y2),
        3: (width - x2, height - y2, width - x1, height - y1),
        4: (x1, height - y2, x2, height - y1),
        5: (y1, x1, y2, x2),
        6: (y1, height - x2, y2, height - x1),
        7: (width - y2, height - x2, width - y1, height - x1),
        8: (width - y2, x1, width - y1, x2),
    }.get(turn, rect)


def render_plan(
    path: Path, max_side: int | None, fallback_pixels: int, limits: ServeLimits
) -> tuple[int | None, int]:
    """(the side to fit the rendering into, the pixels its decode holds) of a gallery image,
    from its header: a scene larger than `limits.scene_max_side` is sent downscaled, and a JPEG
    decodes reduced as `render_jpeg` asks. An unreadable header gives (max_side,
    fallback_pixels): the rendering then reports the problem."""
    try:
        with open_image(path) as image:
            width, height = image.size
            fmt = image.format
    except ImageError:
        return max_side, fallback_pixels
    if max_side is None and max(width, height) > limits.scene_max_side:
        max_side = limits.scene_max_side
    scale = 1
    if max_side is not None and fmt in _JPEG:
        factor = max(1, max(width, height) // max_side)
        scale = next(s for s in (8, 4, 2, 1) if s <= factor)
    return max_side, -(-width // scale) * -(-height // scale)


# ---- error messages name files relative to the index ------------------------------------------

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"/:,;()]+/)+[^\s'\"/:,;()]*")
_ROUTE_PREFIXES = ("/api/", "/docs", "/static/", "/openapi")


def path_redactor(index_dir: str | os.PathLike[str]) -> Callable[[str], str]:
    """A function that rewrites a message so that it names no server folder: paths inside the
    index become relative to it (`shards/000000000000-000012.npy`), the index itself is named
    by its folder's name, and any other absolute path by its file name."""
    given = Path(index_dir)
    roots = {str(given), os.path.abspath(given), str(given.resolve())}
    roots = sorted((r for r in roots if r not in ("", ".", "/")), key=len, reverse=True)
    name = given.resolve().name

    def redact(message: str) -> str:
        for root in roots:
            message = message.replace(root + os.sep, "")
        for root in roots:
            message = message.replace(root, name)

        def file_name(match: re.Match[str]) -> str:
            text = match.group(0)
            if text.startswith(_ROUTE_PREFIXES):
                return text
            return text.rstrip("/").rsplit("/", 1)[-1]

        return _ABSOLUTE_PATH.sub(file_name, message)

    return redact


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
    budget = DecodeBudget(limits.decode_budget_pixels)
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
    app.state.decode_budget = budget
    _add_error_handlers(app, path_redactor(index_dir))
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
                decode_budget_pixels=limits.decode_budget_pixels,
                decode_wait_s=limits.decode_wait_s,
            ),
        )

    @guarded.get("/images", response_model=ImagePage, tags=["index"])
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

    @guarded.get("/images/{image_id}", response_model=ImageDetail, tags=["index"])
    def image_detail(image_id: ImageId) -> ImageDetail:
        """An indexed image and the person boxes found in it."""
        image = _known_image(catalog, image_id)
        boxes = [
            PersonBox(row=b.row, box=list(b.box), det_score=b.det_score)
            for b in catalog.boxes(image_id)
        ]
        return ImageDetail(**_info(image).model_dump(), boxes=boxes)

    async def jpeg(request: Request, image_id: int, max_side: int | None) -> Response:
        found = await run_in_threadpool(catalog.image_and_path, image_id)
        if found is None:
            raise HTTPException(404, _unknown_image(image_id))
        image, path = found
        stamp = await run_in_threadpool(FileStamp.of, path)
        if stamp is None:
            raise HTTPException(404, f"image {image_id} is in the index but its file is gone")
        kind = "scene" if max_side is None else f"thumb{max_side}"
        etag = f'"{kind}-{image_id}-{stamp.mtime_ns}-{stamp.size}"'
        headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        key = (kind, image_id, stamp)
        try:
            data = cache.get_or_make(key, _cache_miss)
        except _CacheMiss:
            side, pixels = await run_in_threadpool(
                render_plan, path, max_side, image.width * image.height, limits
            )
            async with budget.reserve(pixels, limits.decode_wait_s):
                data = await run_in_threadpool(
                    render_jpeg, path, side, limits.max_gallery_pixels, image.name
                )
            data = cache.get_or_make(key, lambda: data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @guarded.get(
        "/images/{image_id}/scene",
        response_class=Response,
        responses=JPEG_RESPONSE,
        tags=["index"],
    )
    async def scene(request: Request, image_id: ImageId) -> Response:
        """The full scene image, re-encoded as JPEG (boxes are in its pixel coordinates); a
        scene larger than the server's scene limit (8192 px a side by default) comes
        downscaled to fit it, in the same proportions."""
        return await jpeg(request, image_id, None)

    @guarded.get(
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
        """The scene fitted into size x size pixels (never enlarged), as JPEG."""
        return await jpeg(request, image_id, size)

    async def search(
        probe: ProbeImage,
        top_k: int,
        cameras: list[int] | None,
        image_id: int | None = None,
        exclude: list[str] | None = None,
    ) -> SearchResult:
        """Decode the probe within the decode budget, then rank on the searcher's thread; the
        budget holds the probe's pixels until the ranking is done."""
        try:
            if top_k > limits.max_top_k:
                raise HTTPException(422, f"top_k must be at most {limits.max_top_k}, got {top_k}")
            started = time.perf_counter()
            async with budget.reserve(probe.decode_pixels, limits.decode_wait_s) as held:
                person = await run_in_threadpool(decode_probe, probe)
                held.shrink(person.shape[0] * person.shape[1])
                hits = await service.call(_rank, person, top_k, cameras, exclude or [])
                del person
        finally:
            probe.close()
        took_ms = (time.perf_counter() - started) * 1000
        images = await run_in_threadpool(catalog.images_by_path, [h.image_path for h in hits])
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
            list[CameraId] | None,
            Form(
                max_length=MAX_CAMERAS,
                description="only persons seen by this camera (repeatable)",
            ),
        ] = None,
    ) -> SearchResult:
        """Search with a person in an uploaded image."""
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(
                413, f"the upload is larger than the limit of {limits.max_upload_bytes:,} bytes"
            )
        probe = await run_in_threadpool(open_upload_probe, data, _parse_box(box), limits)
        del data
        return await search(probe, top_k, camera)

    @guarded.post("/search/indexed", response_model=SearchResult, tags=["search"])
    async def search_indexed(request_body: IndexedSearch) -> SearchResult:
        """Search with a person in an indexed image; that image's own persons are left out."""
        image_id = request_body.image_id
        found = await run_in_threadpool(catalog.image_and_path, image_id)
        if found is None:
            raise HTTPException(404, _unknown_image(image_id))
        path = found[1]
        probe = await run_in_threadpool(
            open_indexed_probe, path, image_id, request_body.box, limits
        )
        return await search(
            probe, request_body.top_k, request_body.cameras, image_id=image_id, exclude=[str(path)]
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
    person: np.ndarray,
    top_k: int,
    cameras: list[int] | None,
    exclude_paths: list[str],
) -> list[SearchHit]:
    """On the searcher's thread: embed the probe person (already cut out), rank the gallery's."""
    feature = searcher.embed_probe(person)
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


class _CacheMiss(Exception):
    pass


def _cache_miss() -> bytes:
    raise _CacheMiss


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


def _add_error_handlers(app: FastAPI, redact: Callable[[str], str]) -> None:
    """JSON errors; `redact` keeps server folders out of every message."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = "no such page or API route; the API is described at /docs"
        if error.status_code == 405:
            message = "this method is not allowed here; the API is described at /docs"
        return error_response(error.status_code, redact(message), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> Response:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, redact("invalid request: " + "; ".join(problems)))

    @app.exception_handler(ImageRejected)
    async def rejected_image(_: Request, error: ImageRejected) -> Response:
        return error_response(error.status, redact(error.message))

    @app.exception_handler(BudgetExhausted)
    async def busy(_: Request, error: BudgetExhausted) -> Response:
        return error_response(503, str(error), {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(PersonSearchError)
    async def search_error(_: Request, error: PersonSearchError) -> Response:
        return error_response(422, redact(str(error)))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> Response:
        log.exception("unexpected error while serving a request", exc_info=error)
        return error_response(500, "internal error; the server log has the details")
