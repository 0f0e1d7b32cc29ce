"""What protects the web server: its limits, the decode budget shared by all requests, the
request guard (body size, Host header, security headers), the access token, the upload and
top-k checks at the API edge, and JSON errors that name no server folder.

- Uploads are bounded in bytes (the whole request body is counted, Content-Length or not).
- Decoding is bounded across requests: a shared budget of pixels being decoded (`DecodeBudget`;
  a request that cannot get its share in time is answered 503 with Retry-After).
- Error messages name files relative to the index, never a server folder (`path_redactor`).
- With a token, every /api route but /api/health needs `Authorization: Bearer <token>`.
- Host headers are checked against `allowed_hosts` (loopback names by default), so a web page
  elsewhere cannot reach a loopback server by DNS rebinding.
"""

# No `from __future__ import annotations`: FastAPI reads the token check's annotations at run
# time, and its dependency is a closure.

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from personsearch.errors import PersonSearchError
from personsearch.serve.imaging import ImageRejected

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small form fields
JPEG_MAX_SIDE = 65_500  # libjpeg refuses to encode a wider or taller image
MAX_DECODE_WAIT_S = 600.0
MMAP_THRESHOLD_BYTES = 1024 * 1024  # blocks from 1 MB up are mapped, and unmapped when freed
# The page loads nothing from elsewhere; /docs (Swagger UI from a CDN) is left without a CSP.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


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


# ---- limits at the API edge ------------------------------------------------------------------


async def read_upload(file: UploadFile, limits: ServeLimits) -> bytes:
    """The uploaded file's bytes; 413 when it is larger than `limits.max_upload_bytes` (read no
    further than one byte past the limit)."""
    data = await file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(
            413, f"the upload is larger than the limit of {limits.max_upload_bytes:,} bytes"
        )
    return data


def check_top_k(top_k: int, limits: ServeLimits) -> None:
    """422 for a top_k above the server's limit: the upload form bounds top_k in its schema, an
    indexed search's body (`IndexedSearch`) does not, so every search is checked here."""
    if top_k > limits.max_top_k:
        raise HTTPException(422, f"top_k must be at most {limits.max_top_k}, got {top_k}")


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


# ---- the access token ------------------------------------------------------------------------


def token_check(token: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that answers 401 unless the request carries `Authorization: Bearer <token>`
    (compared in constant time); with no token it lets every request through."""
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


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON body every error gets: {"error": <kind>, "message": <message>}."""
    kind = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, redact: Callable[[str], str]) -> None:
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
