"""Images decoded within the decode budget: a probe decoded at the scale its box needs and cut
out at once, and the decode plan (side, pixels held) of a scene or thumbnail render.

A probe's header is read and checked first (`open_upload_probe`, `open_indexed_probe`: type,
pixel and shape policy, box), so a request knows what its decode will hold before it asks the
budget (`personsearch.serve.limits.DecodeBudget`) for it; `decode_probe` then decodes it.
"""

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from personsearch.boxes import crop_bounds
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
from personsearch.errors import ImageError
from personsearch.search.searcher import validate_box
from personsearch.serve.imaging import REFUSED_STATUS, ImageRejected, check_pixels, upload_kind
from personsearch.serve.limits import ServeLimits

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


def open_video_frame_probe(
    path: Path, image_id: int, time_s: float, box: list[float] | None, limits: ServeLimits
) -> ProbeImage:
    """The frame at `time_s` of an indexed video as the probe (decoded now: a video frame has
    no header to plan from). A video that cannot be read now is a 404."""
    from personsearch.data.video import VideoError, read_frame_at

    what = f"video {image_id} at {time_s:.2f} s"
    try:
        frame = read_frame_at(path, time_s, max_pixels=limits.max_gallery_pixels)
    except (OSError, VideoError) as error:
        reason = str(error).replace(str(path), path.name)  # the file, never its folder
        raise ImageRejected(404, f"{what} cannot be read now ({reason})") from None
    image = Image.fromarray(frame.image)
    try:
        return _plan_probe(image, what, False, box, limits)
    except BaseException:
        image.close()
        raise


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
    return crop_bounds(box, width, height)


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
