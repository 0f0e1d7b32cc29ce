"""The web server's JSON API on a small synthetic index: every endpoint, its OpenAPI schema, and
each kind of bad input refused with a JSON error (oversize and chunked uploads, undecodable and
unaccepted files, decompression bombs, bad ids, paths, tokens, hosts, boxes)."""

from __future__ import annotations

import argparse
import io
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extras (fastapi) are not installed")
pytest.importorskip("multipart", reason="the web extras (python-multipart) are not installed")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from serve_fixture import ServedGallery, build_served_gallery  # noqa: E402

from personsearch.errors import ConfigError  # noqa: E402
from personsearch.search.index import GalleryIndexError  # noqa: E402
from personsearch.serve.app import create_app  # noqa: E402
from personsearch.serve.imaging import BytesLRU, ImageRejected, decode_upload  # noqa: E402
from personsearch.serve.limits import FORM_OVERHEAD_BYTES, ServeLimits  # noqa: E402

BASE = "http://127.0.0.1"
TOKEN = "s3cret-token-for-tests"
SMALL_UPLOAD = 200_000  # bytes: a test limit, so oversize bodies stay small


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> ServedGallery:
    return build_served_gallery(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def client(gallery):
    app = create_app(gallery.index_dir, limits=ServeLimits(max_upload_bytes=SMALL_UPLOAD))
    with TestClient(app, base_url=BASE) as test_client:  # runs the lifespan: closes at the end
        yield test_client


@pytest.fixture(scope="module")
def token_client(gallery):
    with TestClient(create_app(gallery.index_dir, token=TOKEN), base_url=BASE) as test_client:
        yield test_client


def png_bytes(width: int = 60, height: int = 40, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims width x height pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def upload(client, data: bytes, box: str | None = None, **fields):
    form = {key: str(value) for key, value in fields.items()}
    if box is not None:
        form["box"] = box
    return client.post("/api/search/upload", files={"file": ("probe", data)}, data=form)


def box_text(box) -> str:
    return ",".join(f"{v:g}" for v in box)


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"}
    for word in words:
        assert word in body["message"], body["message"]


# ---- the endpoints ---------------------------------------------------------------------------


def test_health_and_page(client):
    assert client.get("/api/health").json() == {"status": "ok", "version": "0.1.0"}
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_openapi_schema_describes_every_route_and_ids_are_integers(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {
        "/api/health",
        "/api/stats",
        "/api/images",
        "/api/images/{image_id}",
        "/api/images/{image_id}/scene",
        "/api/images/{image_id}/thumbnail",
        "/api/search/upload",
        "/api/search/indexed",
    } <= set(paths)
    assert {"SearchResult", "Hit", "Stats", "ErrorBody"} <= set(schema["components"]["schemas"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    # No route takes a file path: every path parameter is an integer id.
    for route in paths.values():
        for operation in route.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"]["type"] == "integer", parameter


def test_stats(client, gallery):
    stats = client.get("/api/stats").json()
    assert stats["images"] == 12 and stats["failed_images"] == 0
    assert stats["persons"] == sum(len(im.boxes) for im in gallery.images)
    assert stats["cameras"] == [1, 2]
    assert stats["model"] == "color-hist-v1" and stats["pipeline"] == "baseline"
    assert stats["index"] == "index" and str(gallery.index_dir) not in str(stats)
    assert stats["limits"]["max_upload_bytes"] == SMALL_UPLOAD


def test_search_by_upload_ranks_the_planted_person_first(client, gallery):
    response = upload(client, gallery.probe.read_bytes(), box_text(gallery.probe_box), top_k=6)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["probe"] == {
        "width": 240,
        "height": 180,
        "box": gallery.probe_box.tolist(),
        "image_id": None,
    }
    hits = result["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5, 6]
    assert {h["image"]["name"] for h in hits[:4]} == gallery.planted_names
    assert hits[3]["similarity"] > hits[4]["similarity"] + 0.3
    by_name = {im.path.name: im for im in gallery.images}
    for hit in hits[:4]:
        planted = by_name[hit["image"]["name"]]
        assert hit["box"] == planted.boxes[planted.planted].tolist()


def test_camera_filter(client, gallery):
    response = upload(client, gallery.probe.read_bytes(), box_text(gallery.probe_box), camera=2)
    hits = response.json()["results"]
    assert hits and all(h["image"]["camera"] == 2 for h in hits)
    data = {"box": box_text(gallery.probe_box), "camera": ["1", "2"], "top_k": "50"}
    both = client.post(
        "/api/search/upload", files={"file": ("p", gallery.probe.read_bytes())}, data=data
    )
    assert len(both.json()["results"]) == sum(len(im.boxes) for im in gallery.images)


def test_search_by_indexed_image_leaves_its_own_persons_out(client, gallery):
    images = {im["name"]: im for im in client.get("/api/images").json()["images"]}
    source = next(im for im in gallery.images if im.planted is not None)
    image_id = images[source.path.name]["id"]
    body = {"image_id": image_id, "box": source.boxes[source.planted].tolist(), "top_k": 3}
    result = client.post("/api/search/indexed", json=body).json()
    assert result["probe"]["image_id"] == image_id
    names = [h["image"]["name"] for h in result["results"]]
    assert source.path.name not in names
    assert set(names) == gallery.planted_names - {source.path.name}


def test_image_list_detail_scene_and_thumbnail(client, gallery):
    page = client.get("/api/images", params={"offset": 2, "limit": 5}).json()
    assert page["total"] == 12 and page["offset"] == 2 and len(page["images"]) == 5
    cam1 = client.get("/api/images", params={"camera": 1, "limit": 200}).json()
    assert cam1["total"] == 6 and all(im["camera"] == 1 for im in cam1["images"])

    first = client.get("/api/images", params={"limit": 1}).json()["images"][0]
    detail = client.get(f"/api/images/{first['id']}").json()
    source = next(im for im in gallery.images if im.path.name == detail["name"])
    assert [b["box"] for b in detail["boxes"]] == source.boxes.tolist()
    assert detail["persons"] == len(source.boxes)

    scene = client.get(f"/api/images/{first['id']}/scene")
    assert scene.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(scene.content)).size == (240, 180)
    thumb = client.get(f"/api/images/{first['id']}/thumbnail", params={"size": 64})
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 48)
    assert "max-age" in thumb.headers["cache-control"]
    again = client.get(
        f"/api/images/{first['id']}/thumbnail",
        params={"size": 64},
        headers={"If-None-Match": thumb.headers["etag"]},
    )
    assert again.status_code == 304 and again.content == b""
    assert_error(client.get(f"/api/images/{first['id']}/thumbnail?size=5000"), 422, "size")


# ---- bad input, each refused with a JSON error -----------------------------------------------


def test_oversize_upload_is_refused(client):
    # declared by Content-Length, far over: refused before the body is read
    assert_error(upload(client, b"\xff\xd8\xff" + b"0" * (2 * SMALL_UPLOAD)), 413, "limit")
    # just over the file limit, inside the multipart allowance: refused by the upload route
    assert_error(upload(client, b"\xff\xd8\xff" + b"0" * SMALL_UPLOAD), 413, "limit")


def test_chunked_body_without_length_is_cut_off(client):
    boundary = "testboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(2 * (SMALL_UPLOAD + FORM_OVERHEAD_BYTES) // 65536 + 2):
            yield b"0" * 65536

    response = client.post(
        "/api/search/upload",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "limit")


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"", 400, ("empty",)),
        (b"just some text, not an image", 415, ("JPEG, PNG, WebP, BMP",)),
        (b"GIF89a" + b"\x00" * 40, 415, ("not an accepted image type",)),
        (b"%PDF-1.7\n", 415, ("not an accepted image type",)),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, 400, ("cannot decode", "PNG")),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, 400, ("cannot decode", "JPEG")),
    ],
)
def test_undecodable_or_unaccepted_upload(client, data, status, words):
    assert_error(upload(client, data, "1,1,10,10"), status, *words)


def test_truncated_png_is_refused(client):
    data = png_bytes(200, 150)
    assert_error(upload(client, data[: len(data) // 2], "1,1,10,10"), 400, "cannot decode")


def test_decompression_bomb_is_refused_before_decoding(client, gallery):
    bomb = png_header_claiming(50_000, 50_000)  # 2.5 gigapixels in ~100 bytes
    assert len(bomb) < 200
    assert_error(upload(client, bomb, "1,1,10,10"), 413, "pixels")
    small_limit = create_app(gallery.index_dir, limits=ServeLimits(max_pixels=10_000))
    with TestClient(small_limit, base_url=BASE) as strict:
        response = upload(strict, png_bytes(200, 100), "1,1,10,10")  # 20,000 pixels
        assert_error(response, 413, "200 x 100 = 20,000 pixels", "10,000")
        assert upload(strict, png_bytes(100, 100), "1,1,10,10").status_code == 200


@pytest.mark.parametrize(
    "box, words",
    [
        ("200,10,300,100", ("outside", "240 x 180")),
        ("-50,-50,-10,-10", ("outside",)),
        ("50,60,40,100", ("no positive size",)),
        ("1,2,3", ("four numbers",)),
        ("a,b,c,d", ("four numbers",)),
        ("1,2,nan,4", ("four numbers",)),
    ],
)
def test_bad_box_is_refused_with_a_message(client, gallery, box, words):
    assert_error(upload(client, gallery.probe.read_bytes(), box), 422, *words)


def test_bad_box_or_top_k_for_an_indexed_search(client):
    assert_error(
        client.post("/api/search/indexed", json={"image_id": 1, "box": [0, 0, 900, 900]}),
        422,
        "outside",
    )
    assert_error(client.post("/api/search/indexed", json={"image_id": 1, "box": [1, 2]}), 422)
    assert_error(client.post("/api/search/indexed", json={"image_id": 1, "top_k": 0}), 422)
    assert_error(
        client.post("/api/search/indexed", json={"image_id": 1, "top_k": 101}), 422, "at most 100"
    )
    assert_error(client.post("/api/search/indexed", content=b"{not json"), 422)
    assert_error(upload(client, png_bytes(), "1,1,10,10", top_k=0), 422, "top_k")


@pytest.mark.parametrize(
    "url, status",
    [
        ("/api/images/0", 422),
        ("/api/images/-3", 422),
        ("/api/images/abc", 422),
        ("/api/images/1.5", 422),
        (f"/api/images/{2**70}", 422),
        ("/api/images/99999", 404),
        ("/api/images/99999/scene", 404),
        ("/api/images/99999/thumbnail", 404),
        ("/api/images/..%2F..%2Fetc%2Fpasswd/scene", 404),
        ("/api/images/%2Fetc%2Fpasswd", 404),
        ("/api/images/1/..%2F..%2F..%2Fetc%2Fpasswd", 404),
        ("/static/..%2F..%2Fsearch%2Findex.py", 404),
        ("/static/../../search/index.py", 404),
        ("/api/nothing-here", 404),
    ],
)
def test_bad_ids_and_paths_are_refused(client, url, status):
    response = client.get(url)
    assert_error(response, status)
    assert b"root:" not in response.content and b"GalleryIndex" not in response.content


def test_unknown_image_in_indexed_search(client):
    assert_error(
        client.post("/api/search/indexed", json={"image_id": 424242}), 404, "no indexed image"
    )


def test_wrong_method_is_a_json_error(client):
    assert_error(client.delete("/api/stats"), 405, "not allowed")


def test_foreign_host_header_is_refused(client):
    assert_error(client.get("/api/health", headers={"Host": "evil.example:8000"}), 400, "host")
    assert client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "[::1]:8000"}).status_code == 200


def test_token_is_required_when_configured(token_client):
    assert token_client.get("/api/health").status_code == 200
    assert token_client.get("/").status_code == 200  # the page holds no data
    missing = token_client.get("/api/stats")
    assert_error(missing, 401, "access token")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = token_client.get("/api/stats", headers={"Authorization": "Bearer nope-nope-nope"})
    assert_error(wrong, 401)
    assert_error(token_client.get("/api/images/1/thumbnail"), 401)
    assert_error(token_client.post("/api/search/indexed", json={"image_id": 1}), 401)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.get("/api/stats", headers=good).status_code == 200
    assert token_client.get("/api/images/1/thumbnail", headers=good).status_code == 200


def test_short_token_and_foreign_index_are_refused(gallery, tmp_path):
    from personsearch.errors import PersonSearchError

    with pytest.raises(PersonSearchError, match="at least 8"):
        create_app(gallery.index_dir, token="short")
    with pytest.raises(GalleryIndexError, match="no gallery index"):
        create_app(tmp_path / "missing")


def test_indexed_file_gone_is_a_404_without_its_path(tmp_path):
    copy = build_served_gallery(tmp_path)
    victim = copy.images[0].path
    with TestClient(create_app(copy.index_dir), base_url=BASE) as client:
        image_id = next(
            im["id"]
            for im in client.get("/api/images").json()["images"]
            if im["name"] == victim.name
        )
        victim.unlink()
        for url in (f"/api/images/{image_id}/scene", f"/api/images/{image_id}/thumbnail"):
            response = client.get(url)
            assert_error(response, 404, "gone")
            assert str(victim.parent) not in response.text
        response = client.post("/api/search/indexed", json={"image_id": image_id})
        assert_error(response, 404, "cannot be read")
        victim.write_bytes(b"no longer an image")  # back, but damaged
        response = client.get(f"/api/images/{image_id}/scene")
        assert_error(response, 404, "cannot be read now", victim.name)
        assert str(victim.parent) not in response.text


# ---- helpers of the server -------------------------------------------------------------------


def test_upload_decoding_follows_exif_orientation():
    image = Image.new("RGB", (60, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_upload(buffer.getvalue(), 10_000).shape == (60, 20, 3)
    with pytest.raises(ImageRejected) as refused:
        decode_upload(buffer.getvalue(), 1_000)
    assert refused.value.status == 413


def test_bytes_lru_stays_within_its_budget():
    cache = BytesLRU(max_bytes=100)
    made = []
    for key in range(10):
        cache.get_or_make(key, lambda key=key: made.append(key) or b"x" * 30)
    assert len(cache) == 3
    cache.get_or_make(9, lambda: b"never")  # a hit: not made again
    assert made == list(range(10))
    assert cache.get_or_make("big", lambda: b"y" * 500) == b"y" * 500 and len(cache) == 3


def serve_args(**overrides) -> argparse.Namespace:
    defaults = {"host": "127.0.0.1", "token": None, "insecure": False}
    return argparse.Namespace(**{**defaults, **overrides})


def test_serve_command_refuses_a_public_address_without_a_token(monkeypatch):
    from personsearch.commands.serve import is_loopback, resolve_token

    monkeypatch.delenv("PERSONSEARCH_TOKEN", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.org")
    assert resolve_token(serve_args()) is None
    with pytest.raises(ConfigError, match="--token generate"):
        resolve_token(serve_args(host="0.0.0.0"))
    assert resolve_token(serve_args(host="0.0.0.0", insecure=True)) is None
    generated = resolve_token(serve_args(host="0.0.0.0", token="generate"))
    assert generated and len(generated) >= 24
    assert resolve_token(serve_args(host="::", token="long-enough")) == "long-enough"
    with pytest.raises(ConfigError, match="at least 8"):
        resolve_token(serve_args(token="short"))
    monkeypatch.setenv("PERSONSEARCH_TOKEN", "from-the-environment")
    assert resolve_token(serve_args(host="10.0.0.1")) == "from-the-environment"


def test_serve_command_stops_with_a_clear_error_on_a_missing_index(tmp_path, capsys):
    from personsearch.cli import main

    assert main(["serve", "--index", str(tmp_path / "none"), "--port", "1"]) == 1
    assert "no gallery index" in capsys.readouterr().err
    assert main(["serve", "--index", str(tmp_path), "--host", "0.0.0.0"]) == 1
    assert "--token" in capsys.readouterr().err
