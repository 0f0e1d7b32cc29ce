"""Hostile and unusual images (docs/bad-input.md, "Images"): every reader refuses or decodes them
exactly, with one clear line, and nothing crashes, wedges the index or blows up memory.

Every image is generated here, in tmp_path: tiny images that crashed OpenCV's HOG, decompression
bombs (a header-only PNG and a real 20000 x 20000 one written row by row), elongated and big
images, every Pillow mode against an independent conversion, and EXIF orientations.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from personsearch.data import images
from personsearch.data.images import (
    MAX_ASPECT,
    MAX_PIXELS,
    ImageRefused,
    image_size,
    read_rgb,
    read_scaled,
)
from personsearch.data.validation import check_images
from personsearch.errors import ImageError, PersonSearchError
from personsearch.search.detectors import WholeImageDetector, fits_hog_window, hog_available
from personsearch.search.embedders import ColorHistogramEmbedder
from personsearch.search.index import GalleryIndex
from personsearch.search.searcher import PersonSearcher
from personsearch.search.store import CRASH_ERROR
from personsearch.serve.imaging import ImageRejected, decode_upload, render_jpeg

ROOT = Path(__file__).resolve().parents[1]
needs_hog = pytest.mark.skipif(not hog_available(), reason="OpenCV 4 (cv2.HOGDescriptor) missing")


# ---- crafting PNG files without holding their pixels ----------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(
    width: int, height: int, rows: Iterable[bytes], *, bit_depth: int = 8, colour_type: int = 2
) -> bytes:
    """A PNG whose rows (filter byte included) are compressed one at a time."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def header_only_png(width: int, height: int) -> bytes:
    """57 bytes claiming width x height pixels: what a decompression bomb's header says."""
    return png_file(width, height, [])


@functools.cache
def real_bomb_png(side: int = 20_000) -> bytes:
    """A decodable side x side bilevel PNG of about 1 MB: 50 MB of rows, zeros compress well."""
    row = b"\x00" * (1 + (side + 7) // 8)
    return png_file(side, side, (row for _ in range(side)), bit_depth=1, colour_type=0)


def save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


# ---- 2. OpenCV's HOG on images smaller than its window ---------------------------------------

TINY_SIZES = [(1, 1), (8, 8), (64, 64), (200, 40), (30, 128), (63, 200), (64, 127), (400, 20)]

HOG_ON_TINY_IMAGES = """
import sys
import numpy as np
from personsearch.cli import main
from personsearch.search.detectors import HogPeopleDetector

sizes = {sizes!r}
detector = HogPeopleDetector()
for width, height in sizes:
    for _ in range(3):  # the corruption does not always kill the first call
        boxes, scores = detector.detect(np.full((height, width, 3), 90, np.uint8))
        assert boxes.shape == (0, 4) and scores.shape == (0,), (width, height)
sys.exit(main(["index", "--gallery", {folder!r}, "--out", {index!r}, "--no-progress"]))
"""


@needs_hog
def test_hog_is_never_handed_an_image_smaller_than_its_window(tmp_path):
    # Each of these sizes killed the process (malloc(): invalid size, double free, segfault)
    # or raised an OpenCV assertion; in a child process, so that a regression fails one test.
    folder = tmp_path / "tiny"
    folder.mkdir()
    for width, height in TINY_SIZES:
        save(folder / f"tiny-{width}x{height}.png", Image.new("RGB", (width, height), (90, 90, 90)))
    script = HOG_ON_TINY_IMAGES.format(
        sizes=TINY_SIZES, folder=str(folder), index=str(tmp_path / "idx")
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(TINY_SIZES)} indexed (0 persons)" in done.stdout
    assert fits_hog_window((128, 64)) and not fits_hog_window((127, 64))
    assert not fits_hog_window((128, 63))


# ---- 2. a process death inside the detector cannot wedge the index ---------------------------


class Poisoned:
    """A detector that dies as a native crash does (no exception, no cleanup) on one image."""

    fingerprint = "poisoned"

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image[0, 0, 0] == 255:
            os._exit(134)  # the status of abort(): "double free or corruption"
        height, width = image.shape[:2]
        return np.array([[0, 0, width, height]], np.float32), np.ones(1, np.float32)


def run_forked(body: Callable[[], None], timeout: float = 60) -> int:
    """Run `body` in a forked child; its exit status (134 when the detector killed it)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            body()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the indexing child hung")


def index_in_child(index_dir: Path, folder: Path, result: Path) -> int:
    def body() -> None:
        with PersonSearcher.open(
            index_dir, Poisoned(), ColorHistogramEmbedder(), batch_images=2
        ) as searcher:
            report = searcher.index_folder(folder, progress=False)
        result.write_text(json.dumps({"added": report.added, "failed": report.failed}))

    result.unlink(missing_ok=True)
    return run_forked(body)


def test_an_image_the_detector_dies_on_is_retried_once_then_recorded_and_skipped(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for name, grey in (("a", 10), ("b", 40), ("c-poison", 255), ("d", 70)):
        save(folder / f"{name}.png", Image.new("RGB", (40, 80), (grey, grey, grey)))
    poison = str((folder / "c-poison.png").resolve())
    index_dir, result = tmp_path / "idx", tmp_path / "result.json"

    # The first death may have been a kill from outside: the image is tried once more.
    assert index_in_child(index_dir, folder, result) == 134
    assert index_in_child(index_dir, folder, result) == 134
    with GalleryIndex.open(index_dir) as index:
        assert index.store.num_images == 2  # the batch before the poison stays committed
    # The second death in a row: recorded as failed, with the reason, and the rest indexed.
    assert index_in_child(index_dir, folder, result) == 0
    report = json.loads(result.read_text())
    assert report["added"] == 1 and [path for path, _ in report["failed"]] == [poison]
    assert report["failed"][0][1].startswith(CRASH_ERROR) and "2 times" in report["failed"][0][1]
    # Not retried while the file is unchanged (the child would die), but reported every time.
    assert index_in_child(index_dir, folder, result) == 0
    assert json.loads(result.read_text()) == report | {"added": 0}
    # A changed file is tried again.
    save(folder / "c-poison.png", Image.new("RGB", (40, 90), (20, 20, 20)))
    assert index_in_child(index_dir, folder, result) == 0
    assert json.loads(result.read_text()) == {"added": 1, "failed": []}
    with GalleryIndex.open(index_dir) as index:
        assert index.store.num_images == 4 and index.store.failed_images() == []


def test_an_exception_in_the_detector_leaves_no_image_blamed(tmp_path):
    class Raising:
        fingerprint = "raising"

        def detect(self, image):
            raise KeyboardInterrupt  # Ctrl-C while detecting: no crash of that image's making

    save(tmp_path / "a.png", Image.new("RGB", (40, 80)))
    with PersonSearcher.open(tmp_path / "idx", Raising(), ColorHistogramEmbedder()) as searcher:
        with pytest.raises(KeyboardInterrupt):
            searcher.index_paths([tmp_path / "a.png"], progress=False)
        assert searcher.index.store.journal.interrupted_image() is None


# ---- 3. decompression bombs --------------------------------------------------------------------

BOMBS = {
    "header-only 20000 x 20000": lambda: header_only_png(20_000, 20_000),
    "real 20000 x 20000": real_bomb_png,
    "header-only 13000 x 12000": lambda: header_only_png(13_000, 12_000),  # under Pillow's limit
}


@pytest.fixture(params=list(BOMBS))
def bomb(request, tmp_path) -> Path:
    path = tmp_path / "bomb.png"
    path.write_bytes(BOMBS[request.param]())
    return path


def test_a_decompression_bomb_is_refused_by_every_file_reader(bomb):
    for read in (read_rgb, read_scaled, image_size):
        with pytest.raises(ImageRefused) as refused:
            read(bomb)
        assert refused.value.reason == "pixels"
        message = one_line(refused.value)
        assert "pixels" in message and "refused" in message and str(bomb) in message


def test_a_decompression_bomb_is_recorded_as_failed_by_index(tmp_path, bomb, capsys):
    from personsearch.cli import main

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    bomb.rename(gallery / "bomb.png")
    save(gallery / "fine.png", Image.new("RGB", (40, 80), (9, 9, 9)))
    argv = ["index", "--gallery", str(gallery), "--out", str(tmp_path / "idx"), "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:  # the whole-image baseline: no OpenCV needed
        patch.setattr("personsearch.search.pipeline.hog_available", lambda: False)
        assert main(argv) == 0
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "bomb.png" in failed[0] and "over the limit" in failed[0]
    assert "1 indexed (1 persons)" in out and "1 failed" in out


def test_a_decompression_bomb_probe_is_one_line_error(tmp_path, bomb, capsys):
    from personsearch.cli import main

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    save(gallery / "fine.png", Image.new("RGB", (40, 80), (9, 9, 9)))
    index = tmp_path / "idx"
    with PersonSearcher.open(index, WholeImageDetector(), ColorHistogramEmbedder()) as searcher:
        searcher.index_folder(gallery, progress=False)
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--probe", str(bomb), "--box", "1,1,9,9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: image") and "over the limit" in err and "\n" not in err


def test_a_decompression_bomb_is_a_reported_issue_of_check_data(tmp_path, bomb):
    fine = save(tmp_path / "fine.png", Image.new("RGB", (40, 80)))
    with pytest.raises(ImageError) as reported:
        check_images([(fine, None), (bomb, None)], read_images=True)
    assert "over the limit" in one_line(reported.value)


def test_the_server_refuses_a_bomb_with_a_4xx(tmp_path, bomb):
    with pytest.raises(ImageRejected) as refused:
        decode_upload(bomb.read_bytes(), max_pixels=40_000_000)
    assert refused.value.status == 413 and "pixels" in refused.value.message
    with pytest.raises(ImageRejected) as refused:  # a gallery file replaced by a bomb
        render_jpeg(bomb, 320, 40_000_000, bomb.name)
    assert refused.value.status == 413 and str(bomb.parent) not in refused.value.message


def test_other_formats_are_not_decoded_whatever_the_name(tmp_path):
    eps = tmp_path / "photo.jpg"  # Pillow would hand EPS to Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="cannot decode image"):
        read_rgb(eps)


# ---- 4. huge but legal images, and elongated ones ----------------------------------------------


def test_an_image_more_elongated_than_the_policy_is_refused(tmp_path):
    long_side = int(MAX_ASPECT * 10)
    allowed = save(tmp_path / "allowed.png", Image.new("RGB", (long_side, 10)))
    assert read_rgb(allowed).shape == (10, long_side, 3)
    for size in ((long_side + 1, 10), (10, long_side + 1)):
        refused_path = save(tmp_path / "refused.png", Image.new("RGB", size))
        with pytest.raises(ImageRefused) as refused:
            read_scaled(refused_path)
        assert refused.value.reason == "aspect" and "longer than" in one_line(refused.value)
        with pytest.raises(ImageRejected) as rejected:
            decode_upload(refused_path.read_bytes(), max_pixels=40_000_000)
        assert rejected.value.status == 422


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch, tmp_path):
    path = save(tmp_path / "big.png", Image.new("RGB", (300, 200)))
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(ImageRefused, match="60,000 pixels, over the limit of 59,999"):
        read_rgb(path)
    assert MAX_PIXELS >= 12_000 * 12_000  # a 144 MP image is read, reduced (next test)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_big_image_is_read_reduced_and_its_boxes_come_back_in_full_pixels(
    monkeypatch, tmp_path, suffix
):
    monkeypatch.setattr(images, "DETECT_MAX_SIDE", 100)
    rng = np.random.default_rng(0)
    pixels = np.kron(
        rng.integers(0, 256, (15, 20, 3), dtype=np.uint8), np.ones((20, 20, 1), np.uint8)
    )
    path = save(tmp_path / f"big{suffix}", Image.fromarray(pixels), quality=95)  # 400 x 300

    scaled = read_scaled(path)
    assert scaled.factor == 4 and scaled.size == (400, 300) and scaled.pixels.shape == (75, 100, 3)
    reference = np.asarray(Image.fromarray(read_rgb(path)).reduce(4), dtype=np.float32)
    tolerance = 0 if suffix == ".png" else 6  # JPEG: the decoder's own DCT scaling
    assert np.abs(scaled.pixels - reference).mean() <= tolerance

    class Fractions:  # a box at fixed fractions of whatever it is shown
        fingerprint = "fractions"

        def __init__(self) -> None:
            self.seen: list[tuple[int, ...]] = []

        def detect(self, image):
            self.seen.append(image.shape)
            height, width = image.shape[:2]
            box = [0.25 * width, 0.2 * height, 0.75 * width, 0.8 * height]
            return np.array([box], np.float32), np.ones(1, np.float32)

    detector = Fractions()
    with PersonSearcher.open(tmp_path / "idx", detector, ColorHistogramEmbedder()) as searcher:
        searcher.index_paths([path], progress=False)
        assert detector.seen == [(75, 100, 3)]
        (record,) = searcher.index.store.records()
        assert (record.width, record.height) == (400, 300)
        np.testing.assert_allclose(record.boxes, [[100, 60, 300, 240]])
        # A probe box is in full-resolution pixels too: valid although outside 100 x 75.
        hits = searcher.search(path, box=(200, 150, 400, 300), exclude_probe_image=False)
        assert len(hits) == 1


# ---- 5. every pixel mode, orientation and format, against an independent conversion ------------


def over_white(grey_or_rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, in exact arithmetic."""
    colour = grey_or_rgb.astype(np.float64)
    if colour.ndim == 2:
        colour = np.repeat(colour[..., None], 3, axis=2)
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(colour * a + 255 * (1 - a))


def grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float64)[..., None], 3, axis=2)


RNG = np.random.default_rng(7)
GREY = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
WIDE = RNG.integers(0, 65536, (24, 32), dtype=np.uint16)


def case_i16(path: Path) -> tuple[Path, np.ndarray]:
    image = Image.fromarray(WIDE)
    assert image.mode == "I;16"
    return save(path.with_suffix(".png"), image), grey3(np.rint(WIDE / 257))


def case_i32(path: Path) -> tuple[Path, np.ndarray]:
    values = WIDE.astype(np.int32)
    values[0, :4] = [-5, 70_000, 0, 65_535]  # out of range: clipped
    expected = np.rint(np.clip(values, 0, 65_535) / 257)
    return save(path.with_suffix(".tif"), Image.fromarray(values)), grey3(expected)


def case_float(path: Path) -> tuple[Path, np.ndarray]:
    values = (WIDE / 65_535).astype(np.float32)
    return save(path.with_suffix(".tif"), Image.fromarray(values)), grey3(np.rint(values * 255))


def case_rgb48(path: Path) -> tuple[Path, np.ndarray]:
    wide = RNG.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    rows = (b"\x00" + wide[y].astype(">u2").tobytes() for y in range(24))
    path = path.with_suffix(".png")
    path.write_bytes(png_file(32, 24, rows, bit_depth=16, colour_type=2))
    return path, np.rint(wide / 257)


def case_palette_transparent(path: Path) -> tuple[Path, np.ndarray]:
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = RNG.integers(0, 16, (24, 32), dtype=np.uint8)
    image = Image.frombytes("P", (32, 24), indices.tobytes())
    image.putpalette(palette.ravel().tolist())
    image.info["transparency"] = 3
    expected = palette[indices].astype(np.float64)
    expected[indices == 3] = 255  # the transparent index, over white
    return save(path.with_suffix(".png"), image, transparency=3), expected


def case_rgb_colour_key(path: Path) -> tuple[Path, np.ndarray]:
    pixels = RGB.copy()
    pixels[::3, ::4] = (1, 2, 3)  # the tRNS colour: transparent wherever it occurs
    expected = pixels.astype(np.float64)
    expected[(pixels == (1, 2, 3)).all(axis=2)] = 255
    return save(path.with_suffix(".png"), Image.fromarray(pixels), transparency=(1, 2, 3)), expected


def case_bilevel(path: Path) -> tuple[Path, np.ndarray]:
    bits = GREY > 127
    image = Image.fromarray(bits)
    assert image.mode == "1"
    return save(path.with_suffix(".png"), image), grey3(bits * 255)


def case_grey(path: Path) -> tuple[Path, np.ndarray]:
    return save(path.with_suffix(".png"), Image.fromarray(GREY)), grey3(GREY)


def case_grey_alpha(path: Path) -> tuple[Path, np.ndarray]:
    image = Image.fromarray(np.stack([GREY, ALPHA], axis=2))
    return save(path.with_suffix(".png"), image), over_white(GREY, ALPHA)


def case_rgba(path: Path) -> tuple[Path, np.ndarray]:
    image = Image.fromarray(np.dstack([RGB, ALPHA]))
    return save(path.with_suffix(".png"), image), over_white(RGB, ALPHA)


def case_cmyk(path: Path) -> tuple[Path, np.ndarray]:
    cmyk = RNG.integers(0, 256, (24, 32, 4), dtype=np.uint8).astype(np.float64)
    expected = np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255)
    image = Image.frombytes("CMYK", (32, 24), cmyk.astype(np.uint8).tobytes())
    return save(path.with_suffix(".tif"), image), expected


def case_webp(path: Path) -> tuple[Path, np.ndarray]:
    return save(path.with_suffix(".webp"), Image.fromarray(RGB), lossless=True), RGB


def case_bmp(path: Path) -> tuple[Path, np.ndarray]:
    return save(path.with_suffix(".bmp"), Image.fromarray(RGB)), RGB


MODES = {
    "I;16": case_i16,
    "I": case_i32,
    "F": case_float,
    "RGB 16-bit": case_rgb48,
    "P + transparency": case_palette_transparent,
    "RGB + tRNS colour": case_rgb_colour_key,
    "1": case_bilevel,
    "L": case_grey,
    "LA": case_grey_alpha,
    "RGBA": case_rgba,
    "CMYK": case_cmyk,
    "WebP": case_webp,
    "BMP": case_bmp,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_reads_as_its_reference_conversion(tmp_path, mode):
    path, expected = MODES[mode](tmp_path / "image")
    pixels = read_rgb(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (24, 32, 3)
    difference = np.abs(pixels.astype(np.float64) - expected)
    # 1: 16-bit RGB PNGs are cut to their high byte by Pillow; CMYK and alpha round once more
    assert difference.max() <= 1, f"{mode}: {difference.max()} off"
    assert (read_scaled(path).pixels == pixels).all()
    if path.suffix in (".png", ".webp", ".bmp"):  # the server's accepted types decode alike
        assert (decode_upload(path.read_bytes(), max_pixels=10_000) == pixels).all()


def test_a_sixteen_bit_png_is_not_read_white(tmp_path):
    path, _ = case_i16(tmp_path / "image")
    assert 100 < read_rgb(path).mean() < 155  # uniform over 0..65535: about mid-grey
    assert 100 < decode_upload(path.read_bytes(), max_pixels=10_000).mean() < 155


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_a_viewer_shows_it(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "rotated.jpg", Image.fromarray(RGB), exif=exif, quality=95)
    with Image.open(path) as stored:
        reference = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    height, width = reference.shape[:2]
    assert (read_rgb(path) == reference).all()
    assert image_size(path) == (width, height)
    assert read_scaled(path).size == (width, height)
    assert (decode_upload(path.read_bytes(), max_pixels=10_000) == reference).all()
    with Image.open(io.BytesIO(render_jpeg(path, None, 10_000, path.name))) as sent:
        assert sent.size == (width, height)  # the server's scene fits the index's boxes


def test_a_png_exif_chunk_is_read_from_its_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "rotated.png", Image.fromarray(RGB), exif=exif)
    assert image_size(path) == (24, 32) and read_rgb(path).shape == (32, 24, 3)


def test_an_unreadable_file_is_a_one_line_error_everywhere(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(save(tmp_path / "whole.png", Image.fromarray(RGB)).read_bytes()[:120])
    for read in (read_rgb, read_scaled):
        with pytest.raises(ImageError, match="cannot decode image") as failed:
            read(path)
        one_line(failed.value)
    with pytest.raises(ImageRejected) as rejected:
        decode_upload(path.read_bytes(), max_pixels=10_000)
    assert rejected.value.status == 400
    with pytest.raises(PersonSearchError, match="image not found"):
        read_rgb(tmp_path / "missing.png")


def test_the_running_server_answers_a_bomb_with_a_4xx_and_takes_a_16_bit_upload(tmp_path):
    pytest.importorskip("fastapi", reason="the web extras (fastapi) are not installed")
    pytest.importorskip("multipart", reason="the web extras (python-multipart) are not installed")
    from fastapi.testclient import TestClient
    from serve_fixture import build_served_gallery

    from personsearch.serve.app import create_app

    served = build_served_gallery(tmp_path, n_images=3)
    victim = served.images[0].path
    with TestClient(create_app(served.index_dir), base_url="http://127.0.0.1") as client:
        image_id = next(
            im["id"]
            for im in client.get("/api/images").json()["images"]
            if im["name"] == victim.name
        )
        victim.write_bytes(header_only_png(20_000, 20_000))  # replaced by a bomb since indexed
        for url in (f"/api/images/{image_id}/scene", f"/api/images/{image_id}/thumbnail"):
            assert client.get(url).status_code == 413
        response = client.post("/api/search/indexed", json={"image_id": image_id})
        assert 400 <= response.status_code < 500 and response.json()["message"]  # was a 500

        wide, _ = case_i16(tmp_path / "probe16")
        response = client.post(
            "/api/search/upload", files={"file": ("p.png", wide.read_bytes(), "image/png")}
        )
        assert response.status_code == 200
        assert response.json()["probe"]["width"] == 32
