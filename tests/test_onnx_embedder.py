"""Bring-your-own ONNX re-id model: a tiny network built and exported here (as torchreid or
fast-reid would export theirs) replaces the built-in embedder, with its own input size and
normalisation from a small config, and indexes and searches a gallery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from personsearch.errors import ConfigError  # noqa: E402
from personsearch.search.detectors import WholeImageDetector  # noqa: E402
from personsearch.search.embedders import Embedder  # noqa: E402
from personsearch.search.onnx_embedder import load_onnx_embedder  # noqa: E402
from personsearch.search.searcher import PersonSearcher  # noqa: E402

# a Caffe-style model: BGR input in 0..255 minus per-channel means, unit std
CAFFE_MEAN = [103.9, 116.8, 123.7]
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript")


class TinyReid(torch.nn.Module):
    """N x 3 x H x W -> N x 16 x 1 x 1 (some exporters keep the pooled map's unit dims)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


def export(path, batch: int = 2, dynamic: bool = True, size=(64, 32)) -> None:
    axes = {"input": {0: "n"}, "feat": {0: "n"}} if dynamic else None
    torch.onnx.export(
        TinyReid().eval(),
        (torch.zeros(batch, 3, *size),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["feat"],
        dynamic_axes=axes,
    )


def write_config(folder, **values) -> str:
    settings = {
        "model": "tiny.onnx",
        "input_height": 64,
        "input_width": 32,
        "mean": CAFFE_MEAN,
        "std": [1.0, 1.0, 1.0],
        "pixel_scale": 1.0,
        "channel_order": "bgr",
        **values,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def reference(crops, size=(64, 32)) -> np.ndarray:
    """What the config promises: bilinear resize, BGR, minus the means, then the network."""
    batch = []
    for crop in crops:
        image = np.asarray(Image.fromarray(crop).resize(size[::-1], Image.Resampling.BILINEAR))
        bgr = image[..., ::-1].astype(np.float32) - np.float32(CAFFE_MEAN)
        batch.append(bgr.transpose(2, 0, 1))
    with torch.no_grad():
        out = (
            TinyReid()
            .eval()(torch.from_numpy(np.ascontiguousarray(np.stack(batch))))
            .flatten(1)
            .numpy()
        )
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def random_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(
            0, 256, (int(rng.integers(20, 200)), int(rng.integers(10, 90)), 3), dtype=np.uint8
        )
        for _ in range(count)
    ]


def test_config_drives_preprocessing_and_output_is_flattened_unit_rows(tmp_path):
    export(tmp_path / "tiny.onnx")
    embedder = load_onnx_embedder(write_config(tmp_path, batch_size=2))
    assert isinstance(embedder, Embedder) and embedder.dim == 16
    crops = random_crops(5)  # 3 ONNX calls of 2, 2, 1
    features = embedder.embed_crops(crops)
    assert features.shape == (5, 16) and features.dtype == np.float32
    np.testing.assert_allclose(features, reference(crops), atol=1e-5)
    assert embedder.embed_crops([]).shape == (0, 16)


def test_fixed_batch_and_fixed_size_graphs(tmp_path):
    export(tmp_path / "tiny.onnx", batch=4, dynamic=False)
    # size left out of the config: taken from the graph; 5 crops padded into 2 batches of 4
    embedder = load_onnx_embedder(write_config(tmp_path, input_height=None, input_width=None))
    assert (embedder.height, embedder.width) == (64, 32)
    crops = random_crops(5, seed=1)
    np.testing.assert_allclose(embedder.embed_crops(crops), reference(crops), atol=1e-5)
    with pytest.raises(ConfigError, match="takes height 64 but the config says input_height=80"):
        load_onnx_embedder(write_config(tmp_path, input_height=80))


def test_fingerprint_follows_model_and_preprocessing(tmp_path):
    export(tmp_path / "tiny.onnx")
    first = load_onnx_embedder(write_config(tmp_path)).fingerprint
    assert load_onnx_embedder(write_config(tmp_path)).fingerprint == first
    assert load_onnx_embedder(write_config(tmp_path, channel_order="rgb")).fingerprint != first


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": "absent.onnx"}, "ONNX model not found"),
        ({"colour": "rgb"}, "unknown config key colour; valid keys in an ONNX embedder config: "),
        ({"std": [1.0, 0.0, 1.0]}, "std must be positive"),
        ({"channel_order": "rbg"}, "channel_order must be 'rgb' or 'bgr'"),
        ({"input_name": "pixels"}, "no input named 'pixels'"),
    ],
)
def test_bad_configs_are_config_errors(tmp_path, values, message):
    export(tmp_path / "tiny.onnx")
    with pytest.raises(ConfigError, match=message):
        load_onnx_embedder(write_config(tmp_path, **values))


def test_dynamic_size_graph_needs_a_size(tmp_path):
    torch.onnx.export(
        TinyReid().eval(),
        (torch.zeros(1, 3, 64, 32),),
        str(tmp_path / "tiny.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["feat"],
        dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}},
    )
    with pytest.raises(ConfigError, match="give input_height and input_width"):
        load_onnx_embedder(write_config(tmp_path, input_height=None, input_width=None))


def test_onnx_embedder_indexes_and_searches(tmp_path):
    export(tmp_path / "tiny.onnx")
    embedder = load_onnx_embedder(write_config(tmp_path))
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    crops = random_crops(6, seed=2)
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(gallery / f"person{i}.png")
    with PersonSearcher.open(tmp_path / "index", WholeImageDetector(), embedder) as searcher:
        report = searcher.index_folder(gallery, progress=False)
        assert (report.added, report.boxes) == (6, 6)
        hits = searcher.search(crops[3], top_k=3)  # the probe as an array: nothing excluded
    assert hits[0].image_path.endswith("person3.png")
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
