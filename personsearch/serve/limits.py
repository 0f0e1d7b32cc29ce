"""What one request, and all requests together, may ask of the web server.

- `ServeLimits`: the limits, checked when they are made.
- Uploads are bounded in bytes (`read_upload`; the request guard in middleware.py counts the
  whole body), and top_k by the server's limit (`check_top_k`).
- Decoding is bounded across requests: a shared budget of pixels being decoded (`DecodeBudget`;
  a request that cannot get its share in time is answered 503 with Retry-After).
"""

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import UploadFile
from starlette.exceptions import HTTPException

from personsearch.errors import PersonSearchError

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small form fields
JPEG_MAX_SIDE = 65_500  # libjpeg refuses to encode a wider or taller image
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
