"""The web server under hostile input: the decode budget (503 + Retry-After when it stays
full), probes decoded cut out and reduced, integers beyond SQLite's range and huge camera lists
(422, chunked SQL), an absurdly wide scene, error messages without server folders, and the
serve command's limits. Memory itself is measured by benchmarks/bench_serve_load.py --memory."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extras (fastapi) are not installed")
pytest.importorskip("multipart", reason="the web extras (python-multipart) are not installed")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from serve_fixture import ServedGallery, build_served_gallery  # noqa: E402

from personsearch.data.images import decode  # noqa: E402
from personsearch.errors import PersonSearchError  # noqa: E402
from personsearch.search.index import GalleryIndex, ImageRecord  # noqa: E402
from personsearch.search.pipeline import open_searcher  # noqa: E402
from personsearch.search.searcher import crop_box  # noqa: E402
from personsearch.serve.app import create_app  # noqa: E402
from personsearch.serve.decoding import decode_probe, open_upload_probe  # noqa: E402
from personsearch.serve.errors import path_redactor  # noqa: E402
from personsearch.serve.limits import BudgetExhausted, DecodeBudget, ServeLimits  # noqa: E402
from personsearch.serve.schemas import MAX_CAMERAS  # noqa: E402

BASE = "http://127.0.0.1"
HUGE = 10**30
LIMITS = ServeLimits()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> ServedGallery:
    return build_served_gallery(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def client(gallery):
    with TestClient(create_app(gallery.index_dir), base_url=BASE) as test_client:
        yield test_client


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"}
    for word in words:
        assert word in body["message"], body["message"]
    return body


def upload(client, data: bytes, box: str | None = None, **fields):
    form = dict(fields.items())
    if box is not None:
        form["box"] = box
    return client.post("/api/search/upload", files={"file": ("probe", data)}, data=form)


def encoded(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def box_text(box) -> str:
    return ",".join(f"{v:g}" for v in box)


# ---- integers and lists that SQLite cannot take ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "where"),
    [
        (f"/api/images?offset={2**63}", "offset"),
        (f"/api/images?camera={HUGE}", "camera"),
        (f"/api/images?camera=-{HUGE}", "camera"),
        (f"/api/images/{HUGE}", "image_id"),
        (f"/api/images/{2**63}/scene", "image_id"),
        (f"/api/images/{HUGE}/thumbnail", "image_id"),
    ],
)
def test_integers_beyond_sqlite_are_a_422(client, url, where):
    assert_error(client.get(url), 422, where, "less than or equal" if "-" not in url else "greater")


def test_largest_sqlite_integers_are_answered(client):
    page = client.get(f"/api/images?offset={2**63 - 1}&camera={-(2**63)}")
    assert page.status_code == 200 and page.json()["images"] == []
    assert_error(client.get(f"/api/images/{2**63 - 1}"), 404, "no indexed image")


def test_indexed_search_with_huge_ids_or_camera_lists_is_a_422(client):
    search = "/api/search/indexed"
    assert_error(client.post(search, json={"image_id": HUGE}), 422, "image_id")
    assert_error(client.post(search, json={"image_id": 1, "cameras": [HUGE]}), 422, "cameras.0")
    many = list(range(300_000))
    assert_error(
        client.post(search, json={"image_id": 1, "cameras": many}), 422, "cameras", "10000"
    )
    assert_error(client.post(search, json={"image_id": 1, "top_k": HUGE}), 422, "top_k")


def test_upload_with_huge_or_too_many_cameras_is_refused(client, gallery):
    probe, box = gallery.probe.read_bytes(), box_text(gallery.probe_box)
    assert_error(upload(client, probe, box, camera=str(HUGE)), 422, "camera")
    many = [str(c) for c in range(20_000)]  # form fields are capped (1000) by the form parser
    assert_error(upload(client, probe, box, camera=many), 400, "fields")


def test_the_largest_camera_list_is_searched_in_chunks(client, gallery):
    """MAX_CAMERAS cameras (-1 among them: every image) rank exactly as no filter does."""
    image = next(im for im in client.get("/api/images").json()["images"] if im["persons"])
    body = {"image_id": image["id"], "top_k": 20}
    plain = client.post("/api/search/indexed", json=body)
    cameras = list(range(-1, MAX_CAMERAS - 1))
    filtered = client.post("/api/search/indexed", json={**body, "cameras": cameras})
    assert plain.status_code == filtered.status_code == 200, filtered.text
    rows = [h["row"] for h in plain.json()["results"]]
    assert rows and [h["row"] for h in filtered.json()["results"]] == rows


def test_gallery_index_filters_by_any_number_of_cameras_and_paths(gallery):
    with GalleryIndex.open(gallery.index_dir) as index:
        query = index.store.vectors()[:1]
        everything = index.search(query, top_k=10)[0]
        cameras = [*range(-1, 300_000), HUGE, -HUGE]  # too many variables for one statement
        assert index.search(query, top_k=10, cameras=cameras)[0] == everything
        assert index.search(query, top_k=10, cameras=[HUGE]) == [[]]
        dropped = everything[0].image_path
        paths = [f"/nowhere/{i}.png" for i in range(3000)] + [dropped]
        kept = index.search(query, top_k=10, cameras=cameras, exclude_paths=paths)[0]
        assert kept and all(hit.image_path != dropped for hit in kept)
        assert (
            kept
            == [hit for hit in index.search(query, top_k=20)[0] if hit.image_path != dropped][:10]
        )


# ---- absurd scenes and damaged indexes ----------------------------------------------------------


def test_scenes_of_very_wide_images_are_downscaled_or_refused_not_500(tmp_path):
    copy = build_served_gallery(tmp_path, n_images=3)
    wide, wider = copy.images[0].path, copy.images[1].path
    stripes = np.zeros((1000, 9000, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(wide)  # over the scene limit (8192): sent downscaled
    Image.fromarray(np.zeros((30, 70_000, 3), dtype=np.uint8)).save(wider)  # over JPEG's own
    with TestClient(create_app(copy.index_dir), base_url=BASE) as client:
        ids = {im["name"]: im["id"] for im in client.get("/api/images").json()["images"]}
        scene = client.get(f"/api/images/{ids[wide.name]}/scene")
        assert scene.status_code == 200, scene.text
        assert Image.open(io.BytesIO(scene.content)).size == (LIMITS.scene_max_side, 910)
        # 70000 x 30 used to be a 500 (the JPEG encoder's limit is 65500): the reading policy
        # now refuses its shape with a 422 naming the file.
        for url in (
            f"/api/images/{ids[wider.name]}/scene",
            f"/api/images/{ids[wider.name]}/thumbnail",
        ):
            assert_error(client.get(url), 422, wider.name, "70000 x 30", "times longer")


def test_a_damaged_shard_is_reported_without_server_folders(tmp_path):
    copy = build_served_gallery(tmp_path, n_images=3)
    with TestClient(create_app(copy.index_dir), base_url=BASE) as client:
        probe, box = copy.probe.read_bytes(), box_text(copy.probe_box)
        assert upload(client, probe, box).status_code == 200
        # An indexer adds a batch while the server runs; then a shard is damaged on disk.
        with GalleryIndex.open(copy.index_dir) as index:
            fingerprint, dim = index.store.fingerprint, index.store.dim
        with GalleryIndex.open_for_writing(
            copy.index_dir, fingerprint=fingerprint, dim=dim
        ) as index:
            record = ImageRecord(
                str(tmp_path / "late.png"), None, 1, 0.0, 10, 10, boxes=[[0, 0, 5, 5]], scores=[1]
            )
            index.store.add_batch([record], np.eye(1, dim, dtype=np.float32))
        shard = sorted((copy.index_dir / "shards").iterdir())[0]
        shard.write_bytes(b"not a numpy file")
        body = assert_error(upload(client, probe, box), 422, "damaged", f"shards/{shard.name}")
        assert str(tmp_path) not in body["message"] and "/shards" not in body["message"]


def test_path_redactor_names_files_relative_to_the_index(tmp_path):
    index = tmp_path / "gallery.index"
    redact = path_redactor(index)
    message = (
        f"gallery index {index} is damaged: cannot read feature shard {index}/shards/0.npy: "
        f"[Errno 2] No such file or directory: '{index.resolve()}/shards/0.npy'; "
        "image /srv/photos/2024/a.jpg is gone; list them with GET /api/images"
    )
    assert redact(message) == (
        "gallery index gallery.index is damaged: cannot read feature shard shards/0.npy: "
        "[Errno 2] No such file or directory: 'shards/0.npy'; "
        "image a.jpg is gone; list them with GET /api/images"
    )


# ---- the decode budget -------------------------------------------------------------------------


def test_a_full_decode_budget_is_a_503_with_retry_after(gallery):
    limits = ServeLimits(decode_budget_pixels=1_000, decode_wait_s=0.05)
    with TestClient(create_app(gallery.index_dir, limits=limits), base_url=BASE) as client:
        budget: DecodeBudget = client.app.state.decode_budget
        assert client.get("/api/stats").json()["limits"]["decode_budget_pixels"] == 1_000
        probe, box = gallery.probe.read_bytes(), box_text(gallery.probe_box)
        image_id = client.get("/api/images").json()["images"][0]["id"]
        budget.available = 0  # as if other requests were decoding
        try:
            for response in (
                upload(client, probe, box),
                client.post("/api/search/indexed", json={"image_id": image_id}),
                client.get(f"/api/images/{image_id}/thumbnail"),
            ):
                assert_error(response, 503, "busy", "retry in 1 s")
                assert response.headers["retry-after"] == "1"
        finally:
            budget.available = budget.capacity
        # The probe (240 x 180) is larger than this whole budget: it is decoded alone.
        assert upload(client, probe, box).status_code == 200
        assert client.get(f"/api/images/{image_id}/thumbnail").status_code == 200
        assert budget.available == budget.capacity


def test_decode_budget_is_first_come_first_served_and_bounded():
    async def scenario() -> list[str]:
        budget = DecodeBudget(100)
        order: list[str] = []
        release_a = asyncio.Event()

        async def hold(name: str, pixels: int, until: asyncio.Event | None, wait: float) -> None:
            try:
                async with budget.reserve(pixels, wait) as held:
                    order.append(f"{name}+{held.held}")
                    if until is not None:
                        await until.wait()
                    held.shrink(5)
                    assert held.held == 5
                    await asyncio.sleep(0)
            except BudgetExhausted:
                order.append(f"{name} busy")

        a = asyncio.create_task(hold("a", 60, release_a, 1))
        await asyncio.sleep(0)
        b = asyncio.create_task(hold("b", 60, None, 1))  # waits for a
        c = asyncio.create_task(hold("c", 30, None, 1))  # fits, but queues behind b
        d = asyncio.create_task(hold("d", 10**9, None, 0.01))  # more than all: times out
        await asyncio.sleep(0.05)
        assert order == ["a+60", "d busy"] and budget.available == 40
        release_a.set()
        await asyncio.gather(a, b, c, d)
        alone = asyncio.create_task(hold("e", 10**9, None, 1))  # all of it, alone
        await alone
        assert budget.available == budget.capacity and budget.in_use == 0
        return order

    assert asyncio.run(scenario()) == ["a+60", "d busy", "b+60", "c+30", "e+100"]


# ---- probes: cut out, reduced, oriented ----------------------------------------------------------


def policy_cut_out(data: bytes, box, factor: int) -> np.ndarray:
    """What the reading policy decodes at `factor`, cut as embed_probe cuts a box from it."""
    with Image.open(io.BytesIO(data)) as image:
        decoded = decode(image, "reference", factor=factor)
    pixels = np.asarray(decoded.image)
    assert decoded.factor == factor
    if box is None:
        return pixels
    return crop_box(pixels, np.asarray(box, dtype=np.float32) / factor)


def oriented(image: Image.Image, orientation: int, kind: str = "PNG", **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, kind, exif=exif, **options)


def probe_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (41, 57), dtype=np.uint8)])
    sixteen = rng.integers(0, 65536, (41, 57), dtype=np.uint16)
    paletted = Image.fromarray(rgb).quantize(16)
    paletted.info["transparency"] = 3
    return {
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "I;16": Image.fromarray(sixteen),
        "P": paletted,
        "L": Image.fromarray(rgb[..., 0]),
    }


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16", "P", "L"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_probe_cut_out_equals_the_policy_decode_for_every_mode_orientation_and_scale(
    mode, orientation
):
    data = oriented(probe_images()[mode], orientation)
    shown = (41, 57) if orientation in (5, 6, 7, 8) else (57, 41)
    boxes = ([3.4, 2.0, 15.6, 19.2], [10, 1.5, shown[0] - 0.5, shown[1]], None)
    for detail in (1024, 20, 13):  # factor 1, then 2 and 3 for the larger boxes
        limits = ServeLimits(probe_detail_px=detail)
        for box in boxes:
            probe = open_upload_probe(data, box, limits)
            assert probe.size == shown and probe.turn == orientation
            expected = policy_cut_out(data, box, probe.factor)
            np.testing.assert_array_equal(decode_probe(probe), expected)


@pytest.mark.parametrize("orientation", [1, 6, 7])
def test_jpeg_probes_use_the_decoders_own_scaling_as_the_policy_does(orientation):
    gradient = np.linspace(0, 255, 400, dtype=np.float32)
    picture = np.dstack([np.broadcast_to(gradient, (300, 400))] * 3).astype(np.uint8)
    data = oriented(Image.fromarray(picture), orientation, "JPEG", quality=90)
    for detail, factor in ((100, 4), (60, 4), (40, 8), (20, 16)):
        probe = open_upload_probe(data, None, ServeLimits(probe_detail_px=detail))
        assert probe.factor == factor and probe.draft == min(factor, 8)
        np.testing.assert_array_equal(decode_probe(probe), policy_cut_out(data, None, factor))
    box = [33.3, 20.5, 290.0, 210.1]
    probe = open_upload_probe(data, box, ServeLimits(probe_detail_px=60))
    np.testing.assert_array_equal(decode_probe(probe), policy_cut_out(data, box, probe.factor))


def test_large_probes_are_decoded_reduced():
    gradient = np.linspace(0, 255, 4000, dtype=np.float32)
    big = Image.fromarray(np.broadcast_to(gradient, (3000, 4000)).astype(np.uint8)).convert("RGB")
    jpeg = open_upload_probe(encoded(big, "JPEG", quality=80), None, LIMITS)
    assert (jpeg.factor, jpeg.draft, jpeg.decode_pixels) == (2, 2, 2000 * 1500)
    assert decode_probe(jpeg).shape == (1500, 2000, 3)  # the JPEG decoder's own scaling
    png = encoded(big.resize((2500, 2100)), compress_level=1)
    whole = open_upload_probe(png, None, LIMITS)
    assert whole.factor == 2 and whole.decode_pixels == 2500 * 2100  # PNG: decoded, then reduced
    assert decode_probe(whole).shape == (1050, 1250, 3)
    small_box = open_upload_probe(png, [100, 200, 300, 700], LIMITS)
    assert small_box.factor == 1 and decode_probe(small_box).shape == (500, 200, 3)


def test_an_elongated_or_huge_upload_is_refused_from_its_header(client):
    long = encoded(Image.new("RGB", (2100, 100)))
    assert_error(upload(client, long), 422, "more than 20 times longer")
    assert_error(upload(client, encoded(Image.new("L", (7000, 6000)))), 413, "over the limit")


def test_upload_search_ranks_as_the_searcher_does(client, gallery):
    """The cut-out probe gives exactly the searcher's ranking and similarities."""
    response = upload(client, gallery.probe.read_bytes(), box_text(gallery.probe_box), top_k="8")
    assert response.status_code == 200, response.text
    pixels = np.asarray(Image.open(gallery.probe).convert("RGB"))
    with open_searcher(gallery.index_dir, None) as searcher:
        expected = searcher.search(pixels, gallery.probe_box.tolist(), top_k=8)
    hits = response.json()["results"]
    assert [h["row"] for h in hits] == [e.row for e in expected]
    assert [h["similarity"] for h in hits] == pytest.approx([e.similarity for e in expected])


# ---- the serve command's limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-upload-mb", "nan"),
        ("--max-upload-mb", "abc"),
        ("--max-megapixels", "inf"),
        ("--decode-budget-mp", "0"),
        ("--decode-wait-s", "-1"),
    ],
)
def test_serve_command_refuses_bad_limits_with_a_usage_error(tmp_path, capsys, option, value):
    from personsearch.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--index", str(tmp_path), option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert "positive finite number" in err or "not a number" in err


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--max-upload-mb", "1e-9", "at least one byte"),
        ("--max-megapixels", "1e300", "not a limit"),
        ("--decode-wait-s", "1000", "at most 600"),
    ],
)
def test_serve_command_refuses_useless_limits_with_one_line(tmp_path, capsys, option, value, words):
    from personsearch.cli import main

    assert main(["serve", "--index", str(tmp_path), option, value]) == 1
    assert words in capsys.readouterr().err


def test_serve_limits_are_validated():
    for bad in (
        {"decode_wait_s": float("nan")},
        {"decode_wait_s": 0},
        {"max_pixels": 0},
        {"decode_budget_pixels": -5},
        {"max_upload_bytes": 2.5},
        {"scene_max_side": 70_000},
    ):
        with pytest.raises(PersonSearchError, match="serve limit"):
            ServeLimits(**bad)
