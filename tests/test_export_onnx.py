"""ONNX export: the re-id net's graph reproduces PyTorch within 1e-4 (any batch size), the
command exports a run folder with the embedder config beside it, a failed check writes nothing,
and the detector exports per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from personsearch.cli import main  # noqa: E402
from personsearch.config import Config, DataConfig  # noqa: E402
from personsearch.data.preprocess import preprocess_crops  # noqa: E402
from personsearch.export.onnx import (  # noqa: E402
    ParityError,
    embedder_config_path,
    export_detector_onnx,
    export_reid_onnx,
)
from personsearch.models.reid import ReidConfig, ReidModel  # noqa: E402
from personsearch.models.saving import save_reid_model  # noqa: E402
from personsearch.search.onnx_embedder import load_onnx_embedder  # noqa: E402

CROP = (96, 48)


def tiny_reid(head: str = "clsa") -> ReidModel:
    """A small CLSA net with non-trivial BatchNorm statistics (what training would leave)."""
    torch.manual_seed(0)
    model = ReidModel(
        ReidConfig(num_classes=7, head=head, backbone="resnet18", pretrained=False, feature_dim=32)
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def run_onnx(path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def test_reid_export_matches_pytorch_at_any_batch_size(tmp_path):
    model = tiny_reid()
    report = export_reid_onnx(model, tmp_path / "clsa.onnx", CROP)
    assert report.path.is_file() and report.max_diff <= 1e-4
    for batch in (1, 5):  # the batch dimension is dynamic
        images = torch.randn(batch, 3, *CROP)
        with torch.no_grad():
            expected = model(images).numpy()
        got = run_onnx(report.path, images)
        assert got.shape == (batch, model.embedding_dim)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_exported_config_makes_an_embedder_equal_to_the_torch_model(tmp_path):
    model = tiny_reid(head="plain")
    report = export_reid_onnx(model, tmp_path / "plain.onnx", CROP)
    assert report.config_path == embedder_config_path(tmp_path / "plain.onnx")
    embedder = load_onnx_embedder(report.config_path)
    assert (embedder.height, embedder.width, embedder.dim) == (*CROP, model.embedding_dim)

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(150, 60), (40, 30)]]
    features = embedder.embed_crops(crops)
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocess_crops(crops, *CROP))).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_a_failed_parity_check_writes_nothing(tmp_path):
    target = tmp_path / "never.onnx"
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_reid_onnx(tiny_reid(head="plain"), target, CROP, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def make_run(tmp_path, head: str = "clsa"):
    run = tmp_path / "run"
    config = Config(data=DataConfig(dataset="synthetic", crop_height=CROP[0], crop_width=CROP[1]))
    save_reid_model(run / "model.pt", tiny_reid(head), config, pids=list(range(7)))
    return run


def test_export_command_writes_graph_and_config(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["export", "onnx", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "max difference" in out
    embedder = load_onnx_embedder(run / "reid.onnx.yaml")
    assert embedder.dim == 3 * 32 and (embedder.height, embedder.width) == CROP
    assert embedder.fingerprint.startswith("onnx:clsa-run:")


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "onnx", "--run", str(tmp_path / "missing")]) == 1
    assert "not found" in capsys.readouterr().err
    run = make_run(tmp_path, head="plain")
    assert main(["export", "onnx", "--run", str(run), "--detector"]) == 1
    assert "'reid' model" in capsys.readouterr().err


def test_detector_exports_per_image_with_dynamic_size(tmp_path):
    from personsearch.models.detector import DetectorConfig, build_detector

    torch.manual_seed(0)
    detector = build_detector(
        DetectorConfig(backbone="resnet18", pretrained=False, min_size=160, max_size=240)
    )
    detector.score_thresh = 0.0  # random weights: keep every detection so boxes are compared
    report = export_detector_onnx(detector, tmp_path / "detector.onnx", (120, 160))
    assert report.path.is_file() and report.max_diff <= 1e-4
    assert report.check_shape != (3, 120, 160)  # checked on another image size than traced


def test_pipeline_export_leaves_nothing_when_a_model_fails(onnx_pipeline, tmp_path):
    from personsearch.errors import PersonSearchError
    from personsearch.export.onnx import export_pipeline
    from personsearch.search.pipeline import write_pipeline_spec

    source = tmp_path / "pipeline"
    write_pipeline_spec(source, onnx_pipeline.parent / "detector-run", tmp_path / "gone")
    # the re-id net names a missing run: its export fails after the detector's
    out = tmp_path / "out"
    with pytest.raises(PersonSearchError, match="gone, which does not exist"):
        export_pipeline(source, out)
    assert list(out.iterdir()) == []  # the detector already exported is not left behind

    write_pipeline_spec(source, onnx_pipeline.parent / "detector-run", "imagenet")
    with pytest.raises(PersonSearchError, match="'imagenet'"):
        export_pipeline(source, out)


def test_pipeline_export_writes_a_pipeline_that_loads(onnx_pipeline):
    from personsearch.search.pipeline import load_pipeline, read_pipeline_spec

    spec = read_pipeline_spec(onnx_pipeline)
    assert spec["detector"] == "detector.onnx.yaml" and spec["reid"] == "reid.onnx.yaml"
    assert sorted(p.name for p in onnx_pipeline.iterdir()) == [
        "detector.onnx",
        "detector.onnx.yaml",
        "pipeline.yaml",
        "reid.onnx",
        "reid.onnx.yaml",
    ]
    pipeline = load_pipeline(onnx_pipeline)
    assert pipeline.embedder.fingerprint.startswith("onnx:")
    assert pipeline.detector.fingerprint.startswith("onnx-detector:")
