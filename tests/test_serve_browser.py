"""The search page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
upload a probe, drag a box on the canvas, search, and find the planted person ranked first;
then pick a gallery image, click a detected person, and search again. Screenshots go to
test-artifacts/ (gitignored)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 15_000

if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the Python package playwright is not installed"
)
uvicorn = pytest.importorskip("uvicorn", reason="the web extras (uvicorn) are not installed")

from serve_fixture import ServedGallery, build_served_gallery  # noqa: E402

from personsearch.serve.app import create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> ServedGallery:
    return build_served_gallery(tmp_path_factory.mktemp("browser"))


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yield its URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start within 10 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(gallery) -> Iterator[str]:
    with serving(create_app(gallery.index_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser, server_url):
    page, problems = open_page(browser, server_url)
    yield page
    assert problems == [], problems  # CSP violations and script errors show up here
    page.close()


def open_page(browser, url: str):
    """A new page at `url`, and the list its script errors and failed loads are collected in."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text} {msg.location}")
            if msg.type == "error"
            else None
        ),
    )
    page.goto(url)
    page.wait_for_function("() => document.getElementById('stats').textContent.trim() !== ''")
    return page, problems


def drag_box(page, box) -> None:
    """Drag from the box's top-left to its bottom-right corner, in image pixels."""
    canvas = page.locator("#canvas")
    bounds = canvas.bounding_box()
    natural_width = page.evaluate("state.probe.width")
    natural_height = page.evaluate("state.probe.height")

    def screen(x: float, y: float) -> tuple[float, float]:
        return (
            bounds["x"] + x * bounds["width"] / natural_width,
            bounds["y"] + y * bounds["height"] / natural_height,
        )

    x1, y1, x2, y2 = (float(v) for v in box)
    page.mouse.move(*screen(x1, y1))
    page.mouse.down()
    page.mouse.move(*screen((x1 + x2) / 2, (y1 + y2) / 2), steps=4)
    page.mouse.move(*screen(x2, y2), steps=4)
    page.mouse.up()


def result_names(page) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.name)")


def wait_for_thumbnails(page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .card img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


def test_upload_draw_box_search_finds_the_planted_person(page, gallery):
    page.set_input_files("#file", str(gallery.probe))
    page.wait_for_selector("#canvas-wrap.has-image")
    assert page.locator("#search").is_disabled()
    drag_box(page, gallery.probe_box)
    drawn = page.evaluate("state.box")
    assert drawn == pytest.approx(gallery.probe_box.tolist(), abs=1.5)
    assert "Person at" in page.inner_text("#status")

    page.select_option("#topk", "10")
    page.click("#search")
    page.wait_for_selector("#results .card")
    wait_for_thumbnails(page)
    names = result_names(page)
    assert len(names) == 10
    assert names[0] in gallery.planted_names
    assert set(names[:4]) == gallery.planted_names
    assert "persons ranked" in page.inner_text("#status")
    assert page.locator("#results .card").first.locator(".box").count() == 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    page.locator("#results .card").first.click()
    page.wait_for_selector("#scene-dialog[open]")
    page.wait_for_function(
        "() => { const img = document.querySelector('#scene-frame img');"
        " return img && img.complete && img.naturalWidth === 240; }"
    )
    assert names[0] in page.inner_text("#scene-title")
    page.screenshot(path=str(ARTIFACTS / "serve_scene.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#scene-dialog:not([open])", state="attached")


def test_pick_gallery_image_click_a_person_and_search(page, gallery):
    source = next(im for im in gallery.images if im.planted is not None)
    page.click("#pick")
    page.wait_for_selector("#gallery-dialog[open] .card")
    image_id = page.evaluate(
        "name => fetch('/api/images?limit=200').then(r => r.json())"
        ".then(p => p.images.find(i => i.name === name).id)",
        source.path.name,
    )
    page.click(f"#gallery-grid .card[data-image-id='{image_id}']")
    page.wait_for_function(f"() => state.probe && state.probe.imageId === {image_id}")

    x1, y1, x2, y2 = source.boxes[source.planted].tolist()
    bounds = page.locator("#canvas").bounding_box()
    scale = bounds["width"] / 240
    page.mouse.click(bounds["x"] + (x1 + x2) / 2 * scale, bounds["y"] + (y1 + y2) / 2 * scale)
    assert page.evaluate("state.box") == [x1, y1, x2, y2]  # the detected box, by one click

    page.click("#search")
    page.wait_for_function(
        "() => document.querySelectorAll('#results .card').length > 0 &&"
        " document.getElementById('status').textContent.includes('ranked')"
    )
    names = result_names(page)
    assert source.path.name not in names  # the probe's own image is left out
    assert set(names[:3]) == gallery.planted_names - {source.path.name}


def test_a_busy_server_is_asked_again_after_retry_after(browser, server_url):
    page, _ = open_page(browser, server_url)  # the 503s below log console errors on purpose
    calls: list[int] = []

    def busy_once(route):
        calls.append(1)
        if len(calls) == 1:
            route.fulfill(
                status=503,
                headers={"Retry-After": "0"},
                content_type="application/json",
                body='{"message": "busy"}',
            )
        else:
            route.continue_()

    page.route("**/api/stats", busy_once)
    stats = page.evaluate("apiJson('/api/stats')")
    assert len(calls) == 2 and isinstance(stats, dict)  # retried once, then the real answer
    page.unroute("**/api/stats")

    calls.clear()

    def always_busy(route):
        calls.append(1)
        route.fulfill(
            status=503,
            headers={"Retry-After": "0"},
            content_type="application/json",
            body='{"message": "busy"}',
        )

    page.route("**/api/stats", always_busy)
    outcome = page.evaluate(
        "apiJson('/api/stats').then(() => 'ok', error => `${error.status} ${error.message}`)"
    )
    assert outcome == "503 busy" and len(calls) == 4  # three retries, then the error shows
    page.close()


def test_token_from_the_link_reaches_the_api_and_leaves_the_address_bar(browser, gallery):
    token = "browser-test-token-123"
    with serving(create_app(gallery.index_dir, token=token)) as url:
        without, _ = open_page(browser, url)
        assert "access token is needed" in without.inner_text("#stats")
        assert without.locator("#token-form").is_visible()
        without.close()

        page, problems = open_page(browser, f"{url}#token={token}")
        assert "12 images" in page.inner_text("#stats")
        assert page.evaluate("() => location.hash") == ""
        assert not page.locator("#token-form").is_visible()
        page.click("#pick")
        page.wait_for_function(
            "() => { const imgs = [...document.querySelectorAll('#gallery-grid img')];"
            " return imgs.length === 12 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
        )
        page.close()
        assert problems == [], problems


def test_a_video_hit_shows_its_frame_and_time_and_plays_from_there(browser, tmp_path_factory):
    from serve_fixture import build_video_gallery

    served = build_video_gallery(tmp_path_factory.mktemp("browser-video"))
    with serving(create_app(served.index_dir)) as url:
        page, problems = open_page(browser, url)
        page.set_input_files("#file", str(served.probe))
        page.wait_for_selector("#canvas-wrap.has-image")
        width, height = page.evaluate("[state.probe.width, state.probe.height]")
        drag_box(page, (1, 1, width - 1, height - 1))
        page.click("#search")
        page.wait_for_selector("#results .card")
        wait_for_thumbnails(page)
        cards = page.locator("#results .card", has_text="cam0.mp4 at 0:")
        assert cards.count() == 1  # one hit per track: the video's one track
        cards.first.click()
        page.wait_for_selector("#scene-dialog[open] video.player")
        assert "cam0.mp4 at 0:" in page.inner_text("#scene-title")
        assert "in view 0:00.0" in page.inner_text("#scene-title")
        page.wait_for_function(
            "() => { const v = document.querySelector('#scene-frame video');"
            " return v && v.src.includes('/media/videos/') && (v.readyState >= 1 || v.error); }"
        )
        played = page.evaluate(
            "() => { const v = document.querySelector('#scene-frame video');"
            " return {ready: v.readyState, error: v.error && v.error.code, time: v.currentTime}; }"
        )
        hit_time = page.evaluate("state.hit.video.time_s")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve_video_hit.png"))
        if played["error"] == 4:  # this Chromium build has no H.264 decoder: nothing to play
            pytest.skip("this Chromium cannot decode H.264 (MEDIA_ERR_SRC_NOT_SUPPORTED)")
        assert played["error"] is None and played["ready"] >= 1
        assert played["time"] == pytest.approx(hit_time, abs=0.25)  # from the hit's moment
        page.close()
        assert problems == [], problems
