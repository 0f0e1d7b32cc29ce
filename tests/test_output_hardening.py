"""Silent wrong answers and tracebacks (docs/bad-input.md, "Settings and outputs"): damaged data
and NaN features are reported, and every output path that cannot be written, every damaged file
read, is one line (`error: ...`, exit status 1) before any work, not a traceback after it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from cuhk_fixture import DEFAULT_IMAGES, write_cuhk_sysu
from PIL import Image
from real_data import REAL_DATA, needs_real
from search_scenes import make_gallery, make_probe

from personsearch.cli import main
from personsearch.commands import _outputs
from personsearch.errors import PersonSearchError, ResultsError
from personsearch.search import pipeline
from personsearch.search.faiss_backends import build_faiss_index
from personsearch.search.index import GalleryIndex, GalleryIndexError, ImageRecord
from personsearch.search.store import CACHE_DIR, DB_NAME, SHARD_DIR

PRW_MINI = REAL_DATA / "prw-mini"
DIM = 8


def _one_line_error(capsys, code: int, *fragments: str) -> tuple[str, str]:
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return out, lines[0]


# ------------------------------------------------------------------ check-data: silent OKs


@pytest.mark.parametrize(
    ("field", "named"),
    [(0, "Images.mat: Img(4).box"), (3, "Images.mat: Img(4).box")],  # NaN x, NaN height
)
def test_check_data_reports_a_nan_box_in_cuhk_sysu(tmp_path, capsys, field, named):
    images = dict(DEFAULT_IMAGES)
    box = [40.0, 20.0, 30.0, 90.0]
    box[field] = float("nan")
    images["s4.jpg"] = [(None, tuple(box))]  # a NaN height was dropped as a zero-size box
    fake = write_cuhk_sysu(tmp_path / "c", images=images, write_images=False)
    code = main(["check-data", "--dataset", "cuhk-sysu", "--root", str(fake.root), "--no-images"])
    _one_line_error(capsys, code, named, "is not finite")


def test_check_data_reports_a_nan_box_in_a_protocol_file(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "c", write_images=False)
    path = fake.root / "annotation" / "test" / "train_test" / "TestG100.mat"
    protocol = scipy.io.loadmat(path)["TestG100"]
    protocol[0, 0]["Query"][0, 0]["idlocate"] = np.array([[np.nan, 10, 30, 90]])
    scipy.io.savemat(path, {"TestG100": protocol})
    code = main(["check-data", "--dataset", "cuhk-sysu", "--root", str(fake.root), "--no-images"])
    _one_line_error(capsys, code, "TestG100.mat", "Query.idlocate", "is not finite")


@needs_real("prw-mini")
def test_check_data_reports_a_nan_box_in_prw(tmp_path, capsys):
    root = tmp_path / "PRW"
    root.mkdir()
    for item in PRW_MINI.iterdir():
        if item.is_file():
            shutil.copy(item, root / item.name)
    shutil.copytree(PRW_MINI / "annotations", root / "annotations")
    shutil.copytree(PRW_MINI / "frames", root / "frames")
    path = root / "annotations" / "c1s1_001051.jpg.mat"
    rows = scipy.io.loadmat(path)["box_new"].astype(np.float64)
    rows[1, 2] = np.nan  # the second person's y
    scipy.io.savemat(path, {"box_new": rows})
    code = main(["check-data", "--dataset", "prw", "--root", str(root), "--no-images"])
    _one_line_error(capsys, code, "c1s1_001051.jpg: box 2", "is not finite")


@pytest.mark.parametrize(("written", "missing"), [((100,), "TestG50.mat"), ((50,), "TestG100.mat")])
def test_check_data_reports_a_missing_default_protocol(tmp_path, capsys, written, missing):
    fake = write_cuhk_sysu(tmp_path / "c", gallery_sizes=written, write_images=False)
    code = main(["check-data", "--dataset", "cuhk-sysu", "--root", str(fake.root), "--no-images"])
    _one_line_error(capsys, code, f"lacks {missing}", "evaluate")


def test_every_gallery_size_the_test_set_allows_is_expected(tmp_path):
    from personsearch.data.validation import missing_protocol_files

    folder = tmp_path / "annotation" / "test" / "train_test"
    folder.mkdir(parents=True)
    for size in (50, 100):
        (folder / f"TestG{size}.mat").write_bytes(b"")
    assert missing_protocol_files(tmp_path, 4) == []  # a tiny pool: only the two defaults
    assert missing_protocol_files(tmp_path, 120) == []  # the synthetic "tiny" world
    assert missing_protocol_files(tmp_path, 768) == ["TestG500.mat"]  # "small" has 500 too
    assert missing_protocol_files(tmp_path, 6978) == [  # CUHK-SYSU's test set: every size
        "TestG500.mat",
        "TestG1000.mat",
        "TestG2000.mat",
        "TestG4000.mat",
    ]


# ------------------------------------------------------------------ NaN features


def _record(name: str, boxes: int) -> ImageRecord:
    return ImageRecord(
        f"/gallery/{name}",
        "0" * 40,
        100,
        1.0,
        64,
        64,
        boxes=np.array([[i, i, i + 10, i + 20] for i in range(boxes)], np.float32),
        scores=np.full(boxes, 0.9, np.float32),
    )


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def small_index(tmp_path) -> tuple[Path, np.ndarray]:
    """An index of 3 batches (3 shards) of 4 rows, with its FAISS cache."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    feats = []
    with GalleryIndex.open_for_writing(folder, fingerprint="m", dim=DIM) as index:
        for i in range(3):
            f = _unit(rng, 4)
            index.store.add_batch([_record(f"img{i}.jpg", 4)], f)
            feats.append(f)
        index.prepare()
    return folder, np.concatenate(feats)


def _damage_shard(folder: Path, which: int, value: float) -> str:
    shard = sorted((folder / SHARD_DIR).iterdir())[which]
    rows = np.load(shard)
    rows[1, 3] = value
    np.save(shard, rows)
    return shard.name


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_rows_in_a_shard_are_named_not_dropped(small_index, value):
    folder, feats = small_index
    name = _damage_shard(folder, 1, value)
    shutil.rmtree(folder / CACHE_DIR)  # the FAISS index is rebuilt from the shards
    with (
        GalleryIndex.open(folder, fingerprint="m") as index,
        pytest.raises(
            GalleryIndexError,
            match=rf"shard .*{name} holds NaN or infinite features in 1 of its 4 "
            r"rows \(first: row 1\)",
        ),
    ):
        index.search_one(feats[0], top_k=12)


def test_a_cached_faiss_index_with_nan_rows_is_not_trusted(small_index):
    import faiss

    folder, feats = small_index
    damaged = feats.copy()
    damaged[5] = np.nan  # as an index cached by an older version from a damaged shard
    (cached,) = (folder / CACHE_DIR).iterdir()
    faiss.write_index(build_faiss_index(damaged, "flat"), str(cached))
    with (
        GalleryIndex.open(folder, fingerprint="m") as index,
        pytest.raises(
            GalleryIndexError, match=r"cached FAISS index \(faiss/flat-12.faiss\) holds NaN"
        ),
    ):
        index.search_one(feats[0], top_k=12)
    # the shard damaged as well: the shard is named
    name = _damage_shard(folder, 1, np.nan)
    with (
        GalleryIndex.open(folder, fingerprint="m") as index,
        pytest.raises(GalleryIndexError, match=name),
    ):
        index.search_one(feats[0], top_k=12)


def test_a_nan_query_is_refused(small_index):
    folder, feats = small_index
    with GalleryIndex.open(folder) as index, pytest.raises(GalleryIndexError, match="query"):
        index.search_one(np.full(DIM, np.nan, np.float32))


@pytest.fixture
def nan_onnx(tmp_path) -> Path:
    """An ONNX re-id model whose features are all NaN, and its embedder config."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import torch

    class NaNReid(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3)) * float("nan")

    model = tmp_path / "nan.onnx"
    torch.onnx.export(
        NaNReid().eval(),
        (torch.zeros(1, 3, 32, 16),),
        str(model),
        dynamo=False,
        input_names=["input"],
        output_names=["feat"],
        dynamic_axes={"input": {0: "n"}, "feat": {0: "n"}},
    )
    config = tmp_path / "nan.yaml"
    config.write_text("model: nan.onnx\ninput_height: 32\ninput_width: 16\n")
    return config


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript")
def test_onnx_embedder_returning_nan_is_named_at_embed_time(nan_onnx):
    from personsearch.search.onnx_embedder import load_onnx_embedder

    embedder = load_onnx_embedder(nan_onnx)
    crops = [np.zeros((40, 20, 3), np.uint8), np.ones((50, 30, 3), np.uint8)]
    with pytest.raises(
        PersonSearchError,
        match=r"ONNX model .*nan\.onnx returned NaN or "
        r"infinite features for 2 of 2 crops",
    ):
        embedder.embed_crops(crops)


@pytest.fixture
def crops_gallery(tmp_path, monkeypatch) -> Path:
    """A gallery of person crops (one person per image); the whole-image detector."""
    monkeypatch.setattr(pipeline, "hog_available", lambda: False)
    scenes = make_gallery(tmp_path / "scenes", n_images=4, seed=1)
    folder = tmp_path / "crops"
    folder.mkdir()
    for scene in scenes:
        image = Image.open(scene.path)
        for k, box in enumerate(scene.boxes.astype(int).tolist()):
            image.crop(box).save(folder / f"{scene.path.stem}_{k}.png")
    return folder


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript")
def test_index_failing_at_its_first_batch_leaves_no_index_folder(
    tmp_path, capsys, nan_onnx, crops_gallery
):
    run = tmp_path / "pipeline"
    run.mkdir()
    (run / "pipeline.yaml").write_text(f"detector: whole-image\nreid: {nan_onnx}\n")
    out = tmp_path / "new.index"
    code = main(
        [
            "index",
            "--gallery",
            str(crops_gallery),
            "--out",
            str(out),
            "--pipeline",
            str(run),
            "--no-progress",
        ]
    )
    _one_line_error(capsys, code, "nan.onnx returned NaN or infinite features")
    assert not out.exists()
    # an existing folder is never removed, even an empty one
    out.mkdir()
    code = main(
        [
            "index",
            "--gallery",
            str(crops_gallery),
            "--out",
            str(out),
            "--pipeline",
            str(run),
            "--no-progress",
        ]
    )
    _one_line_error(capsys, code, "nan.onnx")
    assert out.is_dir()


def test_a_broken_torch_embedder_is_named_by_the_searcher(tmp_path):
    from personsearch.search.searcher import PersonSearcher

    class Broken:
        fingerprint, dim = "broken-net", DIM

        def embed_crops(self, crops):  # type: ignore[no-untyped-def]
            return np.full((len(crops), DIM), np.inf, np.float32)

    with GalleryIndex.open_for_writing(tmp_path / "i", fingerprint="broken-net", dim=DIM) as index:
        searcher = PersonSearcher(None, Broken(), index)
        with pytest.raises(PersonSearchError, match="embedder 'broken-net' returned NaN"):
            searcher.embed_probe(np.zeros((40, 20, 3), np.uint8))


# ------------------------------------------------------------------ search --out and pictures


@pytest.fixture
def built_index(tmp_path, crops_gallery, capsys) -> tuple[Path, Path, str]:
    """An index of the crops gallery (baseline pipeline), a probe and its box."""
    index = tmp_path / "gallery.index"
    assert (
        main(["index", "--gallery", str(crops_gallery), "--out", str(index), "--no-progress"]) == 0
    )
    capsys.readouterr()
    box = make_probe(tmp_path / "probe.png")
    return index, tmp_path / "probe.png", ",".join(f"{v:g}" for v in box)


def _search(index: Path, probe: Path, box: str, *extra: str) -> list[str]:
    return ["search", "--index", str(index), "--probe", str(probe), "--box", box, *extra]


def test_search_out_at_a_folder_below_a_file_or_unwritable_is_one_line(
    tmp_path, built_index, capsys, monkeypatch
):
    index, probe, box = built_index
    (tmp_path / "picture.png").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        _outputs.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    for out, fragment in [
        (tmp_path / "picture.png", "is a folder"),
        (tmp_path / "notes.txt" / "hits.html", "notes.txt is not a folder"),
        (tmp_path / "notes.txt" / "deeper" / "hits.jpg", "notes.txt is not a folder"),
        (locked / "hits.png", "cannot write in"),
        (locked / "sub" / "hits.png", "cannot write in"),
    ]:
        code = main(_search(index, probe, box, "--out", str(out)))
        stdout, _ = _one_line_error(capsys, code, "--out", fragment)
        assert "rank" not in stdout  # refused before searching


def test_a_write_error_while_saving_the_picture_is_one_line(built_index, capsys, monkeypatch):
    from personsearch.report import search_picture

    index, probe, box = built_index

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(search_picture, "write_results_picture", full_disk)
    code = main(_search(index, probe, box, "--out", str(index.parent / "hits.png")))
    _one_line_error(capsys, code, "cannot write --out", "No space left on device")


def _hit(path: Path, box: tuple[float, float, float, float]) -> types.SimpleNamespace:
    return types.SimpleNamespace(image_path=str(path), box=box, similarity=0.5, det_score=0.9)


def test_result_sheets_stay_within_jpeg_and_never_divide_by_zero(tmp_path):
    from personsearch.report.search_picture import JPEG_MAX_SIDE, write_results_picture

    wide = tmp_path / "wide.png"
    Image.new("RGB", (4000, 200), (90, 120, 150)).save(wide)  # 20:1, the widest accepted
    hits = [
        _hit(wide, (0.0, 0.0, 4000.0, 1.0)),  # 1 px tall: enlarged 240x it was 960,000 px wide
        _hit(wide, (10.0, 10.6, 50.0, 11.4)),  # rounded to 0 px tall: a division by zero
        _hit(wide, (3999.6, 199.7, 4000.0, 200.0)),  # a sliver in the corner
        _hit(wide, (-5.0, -5.0, 5000.0, 300.0)),  # past the image (the file changed since)
    ] * 2
    for name in ("sheet.jpg", "sheet.png", "page.html"):
        write_results_picture(tmp_path / name, wide, (0.0, 0.0, 4000.0, 0.5), hits)
    with Image.open(tmp_path / "sheet.jpg") as sheet:
        assert sheet.width <= JPEG_MAX_SIDE and sheet.height <= JPEG_MAX_SIDE
    assert (tmp_path / "page.html").read_text().count("data:image/jpeg") == 9


def test_a_jpeg_sheet_too_tall_is_refused_before_searching(built_index, capsys):
    index, probe, box = built_index
    code = main(
        _search(index, probe, box, "--top-k", "3000", "--out", str(index.parent / "all.jpg"))
    )
    stdout, _ = _one_line_error(capsys, code, "--top-k 3000", "over JPEG's 65,500")
    assert "rank" not in stdout


# ------------------------------------------------------------------ damaged inputs read


def test_zero_byte_index_database_is_one_line(tmp_path, built_index, capsys):
    _, probe, box = built_index
    folder = tmp_path / "empty.index"
    folder.mkdir()
    (folder / DB_NAME).write_bytes(b"")
    code = main(_search(folder, probe, box))
    _one_line_error(capsys, code, "is damaged", "index.sqlite (0 bytes) is not an index database")
    assert [p.name for p in folder.iterdir()] == [DB_NAME]
    (folder / DB_NAME).write_bytes(b"not a database at all, just text" * 40)
    _one_line_error(capsys, main(_search(folder, probe, box)), "index.sqlite")


def test_truncated_detections_file_is_a_results_error(tmp_path):
    from personsearch.data.crops import load_detections

    path = tmp_path / "det.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(
        path,
        image_names=np.array([f"s{i}.jpg" for i in range(50)]),
        det_image=np.arange(500) % 50,
        det_boxes=rng.random((500, 4)) * 100,
        det_scores=rng.random(500),
    )
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ResultsError, match="cannot read detections"):
            load_detections(path)


def test_training_with_a_truncated_detections_file_is_one_line(tmp_path, capsys):
    fake = write_cuhk_sysu(tmp_path / "c", write_images=False)
    detections = tmp_path / "det.npz"
    detections.write_bytes(b"PK\x03\x04 cut short")
    code = main(
        [
            "train",
            "reid",
            "--config",
            "cuhk-sysu-reid",
            "--out",
            str(tmp_path / "run"),
            f"data.root={fake.root}",
            f"data.detections={detections}",
            "model.pretrained=false",
        ]
    )
    _one_line_error(capsys, code, "cannot read detections", "det.npz")


# ------------------------------------------------------------------ unwritable output folders


def _locked(monkeypatch, folder: Path) -> None:
    """Make `folder` unwritable as far as the commands' check can tell (root writes anyway)."""
    real_access = os.access
    monkeypatch.setattr(
        _outputs.os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode)
    )


def _output_cases(tmp_path: Path, target: Path) -> dict[str, list[str]]:
    """Each command with an output under `target` (argv for main)."""
    return {
        "index": [
            "index",
            "--gallery",
            str(tmp_path),
            "--out",
            str(target / "g.index"),
            "--pipeline",
            str(tmp_path / "no-such-run"),
        ],
        "synth": ["synth", "--out", str(target / "world")],
        "train": [
            "train",
            "reid",
            "--config",
            "synthetic-reid",
            "--out",
            str(target / "run"),
            f"data.root={tmp_path / 'world'}",
        ],
        "evaluate": [
            "evaluate",
            "--dataset",
            "cuhk-sysu",
            "--root",
            str(tmp_path),
            "--results",
            str(tmp_path / "no-such.npz"),
            "--per-query",
            str(target / "q.csv"),
        ],
    }


@pytest.mark.parametrize("command", ["index", "synth", "train", "evaluate"])
@pytest.mark.parametrize("how", ["below a file", "no permission"])
def test_unwritable_output_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, command, how):
    if how == "below a file":
        target = tmp_path / "a-file"
        target.write_text("x")
        fragment = "a-file is not a folder"
    else:
        target = tmp_path / "locked"
        target.mkdir()
        _locked(monkeypatch, target)
        fragment = "cannot write in"
    argv = _output_cases(tmp_path, target)[command]
    _one_line_error(capsys, main(argv), fragment)
    # before any work: no world generated, no run loaded (the --pipeline given does not exist)
    assert not (tmp_path / "world").exists()


def test_a_file_where_a_folder_goes_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    for argv in (
        ["index", "--gallery", str(tmp_path), "--out", str(tmp_path / "taken")],
        ["synth", "--out", str(tmp_path / "taken")],
        ["train", "reid", "--config", "synthetic-reid", "--out", str(tmp_path / "taken")],
    ):
        _one_line_error(capsys, main(argv), "taken is a file, not a folder")
    _one_line_error(
        capsys,
        main(
            [
                "evaluate",
                "--dataset",
                "cuhk-sysu",
                "--root",
                str(tmp_path),
                "--results",
                "r.npz",
                "--per-query",
                str(tmp_path),
            ]
        ),
        "--per-query",
        "is a folder",
    )


# ------------------------------------------------------------------ read-only: no write access


def test_search_opens_the_index_read_only_and_writes_nothing(built_index, capsys):
    index_dir, probe, box = built_index
    shutil.rmtree(index_dir / CACHE_DIR)  # the FAISS index must be rebuilt: in memory only
    before = {p: p.stat().st_mtime_ns for p in index_dir.rglob("*")}
    with GalleryIndex.open(index_dir) as index:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            index.store._conn.execute("CREATE TABLE t (x)")
        assert not index.store.writable
    assert main(_search(index_dir, probe, box)) == 0
    assert "rank" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in index_dir.rglob("*")} == before


def _read_only_namespace() -> list[str] | None:
    """The command prefix that runs a program with a folder bind-mounted read-only, if any."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return None
    prefix = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-rm"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


READ_ONLY_SCRIPT = """
import contextlib, io, json, sys
from personsearch.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def test_read_only_folder_for_real(tmp_path, built_index):
    """On a read-only bind mount (root ignores permissions, not a read-only file system):
    search works on a read-only index, and every output into it is one line."""
    prefix = _read_only_namespace()
    if prefix is None:
        pytest.skip("no mount namespace here (unshare)")
    index_dir, probe, box = built_index
    shutil.rmtree(index_dir / CACHE_DIR)
    cases = {
        "search": _search(index_dir, probe, box),
        "search-out": _search(index_dir, probe, box, "--out", str(index_dir / "hits.png")),
        **_output_cases(tmp_path, index_dir),
    }
    shell = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    result = subprocess.run(
        [
            *prefix,
            "sh",
            "-c",
            shell,
            str(index_dir),
            sys.executable,
            "-c",
            READ_ONLY_SCRIPT,
            json.dumps(cases),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"cannot bind-mount read-only here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.splitlines()[-1])
    code, out, err = results.pop("search")
    assert code == 0 and "rank" in out, err
    for name, (code, _out, err) in results.items():
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, (name, err)
        assert "read-only file system" in lines[0], (name, lines[0])
    assert not (index_dir / CACHE_DIR).exists()
