"""The web API's request and response bodies (they make the OpenAPI schema at /openapi.json),
and the checks a request's fields get at the edge: integers within SQLite's 64-bit range, the
box of an upload's form.

Every error body is `ErrorBody`: {"error": <kind>, "message": <what went wrong, what to do>}.
"""

# No `from __future__ import annotations`: FastAPI and pydantic read these annotations at run
# time, and ImageId is used in route signatures.

import math
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

INT64_MAX = 2**63 - 1  # SQLite's integers are signed 64-bit: ids and cameras must fit
INT64_MIN = -(2**63)
MAX_CAMERAS = 10_000  # cameras one search may filter by
THUMBNAIL_SIZES = (32, 640)  # bounds of the thumbnail's longer side, in pixels


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
    images: int = Field(description="images indexed successfully (videos included)")
    videos: int = Field(0, description="of those, the videos")
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
    kind: Literal["image", "video"] = Field(
        "image", description="video: its frames come from /frame?t=, the file from /video"
    )
    duration_s: float | None = Field(None, description="a video's indexed length in seconds")


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
    time_s: float | None = Field(None, description="a video: the sampled frame's time shown")


class VideoPlace(BaseModel):
    """Where in a video a hit is, and (one hit per track) when its track is in view."""

    frame: int = Field(description="the frame number in the video")
    time_s: float = Field(description="seconds from the video's start")
    track: int = Field(description="the person's track id within the video (-1: none)")
    track_start_s: float | None = None
    track_end_s: float | None = None
    track_frames: int | None = Field(None, description="sampled frames of the track")


class VideoTicket(BaseModel):
    url: str = Field(description="plays the video without the token, until `expires`")
    expires: int = Field(description="Unix time in seconds")


class Hit(BaseModel):
    rank: int
    image: ImageInfo
    row: int
    box: list[float] = Field(description="the matched person: x1, y1, x2, y2 in pixels")
    similarity: float = Field(description="cosine similarity of the two persons' features")
    det_score: float
    video: VideoPlace | None = Field(None, description="for a hit in a video: where in it")


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
    time_s: float | None = Field(
        None, ge=0, le=1e7, description="an indexed video: the frame's time in seconds"
    )
    every_frame: bool = Field(False, description="videos: a hit per sampled frame, not per track")


#: A time in a video, in seconds (a query parameter).
FrameTime = Annotated[
    float | None, Query(ge=0, le=1e7, allow_inf_nan=False, description="seconds into the video")
]
#: Media types of the video files served, by suffix.
VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".ogv": "video/ogg",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".ts": "video/mp2t",
    ".mts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".wmv": "video/x-ms-wmv",
    ".flv": "video/x-flv",
    ".3gp": "video/3gpp",
}

ImageId = Annotated[int, PathParam(ge=1, le=INT64_MAX, description="an indexed image's id")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 503)
}
JPEG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "JPEG image"},
    304: {"description": "not modified (ETag matched)"},
}


def parse_box(text: str | None) -> list[float] | None:
    """An upload form's box field, "x1,y1,x2,y2" in pixels; None (the whole image) when empty.
    Anything but four finite numbers is a 422."""
    if text is None or not text.strip():
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise HTTPException(422, f"box {text!r} must be four numbers x1,y1,x2,y2")
    return values
