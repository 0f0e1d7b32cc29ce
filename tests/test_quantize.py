"""int8 ONNX pipelines: quantised copies that load and run like the fp32 ones, clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from personsearch.errors import PersonSearchError

pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def calibration(tiny_world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for image in sorted((tiny_world / "Image" / "SSM").iterdir())[-4:]:
        shutil.copy(image, folder / image.name)
    return folder


def test_int8_pipeline_runs_like_fp32(onnx_pipeline, calibration, tiny_world, tmp_path):
    from personsearch.data.images import read_rgb
    from personsearch.export.quantize import quantize_pipeline
    from personsearch.search.pipeline import load_pipeline
    from personsearch.search.searcher import crop_box

    spec = quantize_pipeline(onnx_pipeline, tmp_path / "int8", calibration)
    int8, fp32 = load_pipeline(spec.parent), load_pipeline(onnx_pipeline)
    assert int8.embedder.fingerprint != fp32.embedder.fingerprint  # an index refuses the mix
    assert int8.embedder.dim == fp32.embedder.dim
    image = read_rgb(sorted((tiny_world / "Image" / "SSM").iterdir())[0])
    boxes, scores = int8.detector.detect(image)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores)
    assert np.isfinite(boxes).all() and (boxes[:, 2] >= boxes[:, 0]).all()
    crops = [crop_box(image, box) for box in fp32.detector.detect(image)[0]]
    a, b = fp32.embedder.embed_crops(crops), int8.embedder.embed_crops(crops)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert (a * b).sum(axis=1).mean() > 0.5  # int8 features still point the fp32 way


def test_quantize_refuses_what_it_cannot_use(onnx_pipeline, tmp_path):
    from personsearch.export.quantize import quantize_pipeline

    with pytest.raises(PersonSearchError, match="calibration folder not found"):
        quantize_pipeline(onnx_pipeline, tmp_path / "a", tmp_path / "absent")
    few = tmp_path / "few"
    few.mkdir()
    (few / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PersonSearchError, match="holds 0 readable images"):
        quantize_pipeline(onnx_pipeline, tmp_path / "b", few)
    torch_pipeline = onnx_pipeline.parent / "torch"
    with pytest.raises(PersonSearchError, match="is not an ONNX pipeline"):
        quantize_pipeline(torch_pipeline, tmp_path / "c", few)
