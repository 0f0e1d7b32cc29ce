"""The picture of a search's ranking (`personsearch search --out`): the probe and its top hits,
each scene scaled down with the person's box drawn and the person enlarged beside it; an HTML
page (.html, pictures embedded) or a PNG/JPEG contact sheet."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personsearch.data.images import open_rgb
from personsearch.errors import PersonSearchError
from personsearch.io import atomic_open, atomic_path

THUMB_HEIGHT = 240
#: A tile never gets wider than this: the scene (a 20:1 panorama would be 4800 px at
#: THUMB_HEIGHT) and the enlarged person (a box 1 px tall would be enlarged 240 times) are
#: reduced further to fit, so that a sheet of 6 columns stays far below JPEG's 65,500 px.
MAX_THUMB_WIDTH = 2400
MAX_CROP_WIDTH = 2 * THUMB_HEIGHT
#: JPEG cannot hold a side longer than this; a PNG sheet is limited to MAX_SHEET_PIXELS.
JPEG_MAX_SIDE = 65_500
MAX_SHEET_PIXELS = 150_000_000
COLUMNS = 6
PROBE_COLOUR = (40, 200, 40)
HIT_COLOUR = (230, 30, 30)
_CAPTION, _GAP = 16, 6  # sheet layout: caption height and gap between cells, in pixels


def sheet_size(hits: int, cell_width: int) -> tuple[int, int]:
    """Width and height in pixels of a contact sheet of the probe and `hits` tiles."""
    tiles = hits + 1
    columns = min(COLUMNS, tiles)
    rows = (tiles + columns - 1) // columns
    return columns * (cell_width + _GAP) + _GAP, rows * (THUMB_HEIGHT + _CAPTION + _GAP) + _GAP


def write_results_picture(
    out: Path, probe: Path, probe_box: Sequence[float] | None, hits: Sequence[Any]
) -> None:
    """The probe and its top hits with boxes drawn: an HTML page or a contact-sheet image."""
    probe_tile = _tile(probe, probe_box, PROBE_COLOUR)
    tiles = [
        _tile(Path(hit.image_path), hit.box, HIT_COLOUR, getattr(hit, "time_s", None))
        for hit in hits
    ]
    if out.suffix.lower() in (".html", ".htm"):
        _write_html(out, probe, probe_tile, hits, tiles)
    else:
        _write_sheet(out, probe_tile, hits, tiles)


def _tile(
    path: Path,
    box: Sequence[float] | None,
    colour: tuple[int, int, int],
    time_s: float | None = None,
) -> Any:
    """The image (a video: its frame at `time_s`) scaled to THUMB_HEIGHT with the box drawn; a
    grey placeholder if unreadable."""
    from PIL import Image, ImageDraw

    try:
        if time_s is None:
            image = open_rgb(path)
        else:
            from personsearch.data.video import read_frame_at

            image = Image.fromarray(read_frame_at(path, time_s).image)
    except PersonSearchError:  # an unreadable image (ImageError) or video (VideoError)
        placeholder = Image.new("RGB", (THUMB_HEIGHT // 2, THUMB_HEIGHT), (128, 128, 128))
        ImageDraw.Draw(placeholder).text((4, 4), "missing", fill=(255, 255, 255))
        return placeholder
    scale = min(THUMB_HEIGHT / image.height, MAX_THUMB_WIDTH / image.width)
    thumb = image.resize(_scaled(image.size, scale))
    if box is None:
        return thumb
    width = max(2, THUMB_HEIGHT // 80)
    ImageDraw.Draw(thumb).rectangle([v * scale for v in box], outline=colour, width=width)
    # Persons are often small in a scene: show the person enlarged beside it. The box is
    # rounded outwards and clipped, so it always covers at least one pixel of the image.
    x1 = min(max(math.floor(box[0]), 0), image.width - 1)
    y1 = min(max(math.floor(box[1]), 0), image.height - 1)
    x2 = max(min(math.ceil(box[2]), image.width), x1 + 1)
    y2 = max(min(math.ceil(box[3]), image.height), y1 + 1)
    crop = image.crop((x1, y1, x2, y2))
    crop = crop.resize(
        _scaled(crop.size, min(THUMB_HEIGHT / crop.height, MAX_CROP_WIDTH / crop.width))
    )
    tile = Image.new("RGB", (thumb.width + crop.width + width, THUMB_HEIGHT), colour)
    tile.paste(crop, (0, 0))
    tile.paste(thumb, (crop.width + width, 0))
    return tile


def _place(hit: Any) -> str:
    """ " at 0:12.5" for a hit in a video, "" for one in an image."""
    time_s = getattr(hit, "time_s", None)
    if time_s is None:
        return ""
    from personsearch.data.video import format_time

    return f" at {format_time(time_s)}"


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _write_html(out: Path, probe: Path, probe_tile: Any, hits: Sequence[Any], tiles: list) -> None:
    def img(tile: Any) -> str:
        buffer = io.BytesIO()
        tile.save(buffer, format="JPEG", quality=85)
        return f'<img src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">'

    cells = [
        f'<figure class="probe">{img(probe_tile)}<figcaption>probe<br>'
        f"{html.escape(probe.name)}</figcaption></figure>"
    ]
    for rank, (hit, tile) in enumerate(zip(hits, tiles, strict=True), 1):
        cells.append(
            f"<figure>{img(tile)}<figcaption>#{rank} sim {hit.similarity:.3f} "
            f"det {hit.det_score:.2f}<br>{html.escape(os.path.basename(hit.image_path))}"
            f"{html.escape(_place(hit))}</figcaption></figure>"
        )
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>person search: "
        f"{html.escape(probe.name)}</title><style>body{{font-family:sans-serif}}"
        "figure{display:inline-block;margin:6px;text-align:center;font-size:12px}"
        ".probe img{outline:3px solid #2c2}</style></head><body>"
        f"<h1>Top {len(hits)} for {html.escape(str(probe))}</h1>\n"
        + "\n".join(cells)
        + "\n</body></html>\n"
    )
    with atomic_open(out, "w", encoding="utf-8") as handle:
        handle.write(page)


def _write_sheet(out: Path, probe_tile: Any, hits: Sequence[Any], tiles: list) -> None:
    from PIL import Image, ImageDraw

    captions = ["probe"] + [f"#{r} {h.similarity:.3f}{_place(h)}" for r, h in enumerate(hits, 1)]
    tiles = [probe_tile, *tiles]
    columns = min(COLUMNS, len(tiles))
    cell_width = max(t.width for t in tiles)
    size = sheet_size(len(hits), cell_width)
    jpeg = out.suffix.lower() != ".png"
    if (jpeg and max(size) > JPEG_MAX_SIDE) or size[0] * size[1] > MAX_SHEET_PIXELS:
        raise PersonSearchError(
            f"--out {out}: a sheet of {len(hits)} results would be {size[0]:,} x {size[1]:,} "
            f"px, over the limit ({'JPEG: 65,500 px a side, ' if jpeg else ''}"
            f"{MAX_SHEET_PIXELS:,} pixels); write .html, or ask for fewer results"
        )
    sheet = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        x = _GAP + (i % columns) * (cell_width + _GAP)
        y = _GAP + (i // columns) * (THUMB_HEIGHT + _CAPTION + _GAP)
        sheet.paste(tile, (x, y))
        draw.text((x, y + THUMB_HEIGHT + 2), caption, fill=(0, 0, 0))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG" if out.suffix.lower() == ".png" else "JPEG")
