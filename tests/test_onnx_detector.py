"""ONNX detectors: both output layouts decoded against a reference, letterbox undone, bad configs named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from personsearch.errors import ConfigError
from personsearch.search.onnx_detector import (
    OnnxDetectorConfig,
    decode_yolo,
    fit_image,
    load_onnx_detector,
    nms,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def yolo_graph(
    path: Path, rows: np.ndarray, size: tuple[int, int], transposed: bool = False
) -> None:
    """A graph that returns `rows` ((4 + C) x N) as a 1 x (4 + C) x N YOLO output, whatever the
    image (plus 0 x the image's mean, so that the input is used)."""
    height, width = size
    constant = rows.T[None] if transposed else rows[None]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(constant.shape))],
        initializer=[
            numpy_helper.from_array(constant.astype(np.float32), "table"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def write_config(path: Path, **values: object) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


# three people-class candidates, one other-class box, one weak one; boxes are cx, cy, w, h
YOLO_ROWS = np.array(
    [  # cx    cy    w    h   | person, car
        [320, 320, 100, 200, 0.9, 0.1],
        [322, 318, 100, 200, 0.8, 0.0],  # overlaps the first: suppressed
        [100, 200, 40, 80, 0.6, 0.2],
        [500, 500, 60, 60, 0.1, 0.95],  # a car
        [550, 100, 30, 60, 0.3, 0.0],  # below the threshold
    ],
    dtype=np.float32,
).T


def reference_yolo(
    image_size: tuple[int, int], input_size: int = 640
) -> tuple[np.ndarray, np.ndarray]:
    """Rows 0 and 2, letterbox undone by hand."""
    height, width = image_size
    scale = min(input_size / height, input_size / width)
    new_w, new_h = round(width * scale), round(height * scale)
    pad_x, pad_y = (input_size - new_w) // 2, (input_size - new_h) // 2
    out = []
    for cx, cy, w, h in YOLO_ROWS[:4, [0, 2]].T:
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        box[[0, 2]] = ((box[[0, 2]] - pad_x) / (new_w / width)).clip(0, width)
        box[[1, 3]] = ((box[[1, 3]] - pad_y) / (new_h / height)).clip(0, height)
        out.append(box)
    return np.array(out, np.float32), np.array([0.9, 0.6], np.float32)


@pytest.mark.parametrize("transposed", [False, True])
def test_yolo_layout_letterbox_decoded_like_reference(tmp_path: Path, transposed: bool) -> None:
    yolo_graph(tmp_path / "yolo.onnx", YOLO_ROWS, (640, 640), transposed=transposed)
    config = write_config(
        tmp_path / "yolo.yaml",
        model="yolo.onnx",
        layout="yolo",
        resize="letterbox",
        input_height=640,
        input_width=640,
        score_thresh=0.5,
        yolo_rows_first=transposed,
    )
    detector = load_onnx_detector(config)
    image = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    boxes, scores = detector.detect(image)
    want_boxes, want_scores = reference_yolo((300, 200))
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    np.testing.assert_allclose(boxes, want_boxes, atol=1e-3)
    assert detector.fingerprint.startswith("onnx-detector:yolo:")


def test_letterbox_pads_evenly_and_keeps_aspect() -> None:
    config = OnnxDetectorConfig(
        model="m.onnx",
        layout="yolo",
        resize="letterbox",
        input_height=64,
        input_width=64,
        pad_value=114,
    )
    image = np.full((20, 40, 3), 7, np.uint8)
    pixels, geometry = fit_image(image, config)
    assert pixels.shape == (64, 64, 3)
    assert geometry.scale_x == geometry.scale_y == 1.6
    assert (geometry.pad_x, geometry.pad_y) == (0.0, 16.0)
    assert (pixels[:16] == 114).all() and (pixels[48:] == 114).all() and (pixels[16:48] == 7).all()
    box = np.array([[0, 16, 64, 48]], np.float32)  # the whole image area in input pixels
    np.testing.assert_allclose(geometry.to_original(box, (20, 40)), [[0, 0, 40, 20]], atol=1e-5)


def test_keep_ratio_follows_torchvision_rule() -> None:
    config = OnnxDetectorConfig(
        model="m.onnx", resize="keep_ratio", shorter_side=100, longer_side=150
    )
    pixels, geometry = fit_image(np.zeros((50, 200, 3), np.uint8), config)
    assert pixels.shape == (38, 150, 3)  # the longer side caps the scale at 0.75
    assert geometry.scale_x == 0.75


def test_nms_matches_torchvision() -> None:
    torch = pytest.importorskip("torch")
    from torchvision.ops import nms as torch_nms

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (200, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        want = torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), want)


def test_yolo_decode_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="person_class 3 is out of range.*2 classes"):
        decode_yolo(YOLO_ROWS[None], 3, 0.5, 0.45, 300)
    from personsearch.errors import PersonSearchError

    with pytest.raises(PersonSearchError, match="one image"):
        decode_yolo(np.zeros((2, 6, 10), np.float32), 0, 0.5, 0.45, 300)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"layout": "ssd"}, "layout must be one of"),
        ({"resize": "letterbox"}, "needs input_height and input_width"),
        ({"resize": "keep_ratio"}, "needs shorter_side"),
        ({"score_thresh": 1.5}, r"score_thresh must be a number in \[0, 1\]"),
        ({"mean": [0, 0]}, "mean must be 3 finite numbers"),
        ({"std": [1, 0, 1]}, "std must be positive"),
        ({"nms_iou": float("nan")}, "nms_iou"),
        ({"bogus": 1}, "unknown config key bogus; valid keys in an ONNX detector config: "),
    ],
)
def test_bad_config_is_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OnnxDetectorConfig.from_dict({"model": "m.onnx", **values})


def test_missing_model_and_outputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ONNX detector model not found"):
        load_onnx_detector(write_config(tmp_path / "a.yaml", model="absent.onnx"))
    yolo_graph(tmp_path / "yolo.onnx", YOLO_ROWS, (64, 64))
    config = write_config(tmp_path / "b.yaml", model="yolo.onnx", layout="boxes_scores_labels")
    with pytest.raises(ConfigError, match=r"no output named 'boxes', 'scores'.*output0"):
        load_onnx_detector(config)


def test_torchvision_detector_export_matches_torch(tmp_path: Path) -> None:
    """A random-weight torchvision Faster R-CNN (small conv backbone) exported with boxes /
    scores / labels: the ONNX detector returns torch's person boxes (label 1) above the threshold."""
    torch = pytest.importorskip("torch")
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=4, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
    )
    backbone.out_channels = 16
    model = FasterRCNN(
        backbone,
        num_classes=3,
        min_size=240,
        max_size=320,
        box_score_thresh=0.0,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
    ).eval()
    with torch.no_grad():  # torchvision's small head init makes the class scores nearly equal
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 1.0)

    class Single(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image):  # noqa: ANN001, ANN202
            (out,) = self.model([image])
            return out["boxes"], out["scores"], out["labels"]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Single().eval(),
            (torch.rand(3, 240, 320),),
            str(tmp_path / "tv.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes={
                "image": {1: "h", 2: "w"},
                "boxes": {0: "k"},
                "scores": {0: "k"},
                "labels": {0: "k"},
            },
        )
    config = write_config(
        tmp_path / "tv.yaml",
        model="tv.onnx",
        layout="boxes_scores_labels",
        resize="none",
        batch_axis=False,
        person_class=1,
        score_thresh=0.3,
    )
    detector = load_onnx_detector(config)
    image = np.random.default_rng(1).integers(0, 255, (260, 300, 3), dtype=np.uint8)
    boxes, scores = detector.detect(image)
    with torch.no_grad():
        (want,) = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    keep = (want["labels"] == 1) & (want["scores"] >= 0.3)
    assert 0 < keep.sum() < len(keep), "the check must keep some boxes and drop others"
    np.testing.assert_allclose(scores, want["scores"][keep].numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, want["boxes"][keep].numpy(), atol=0.05)


# ---- YOLOX: an objectness column, raw grid outputs, the real YOLOX-nano


def test_yolox_objectness_column_scores_by_product(tmp_path: Path) -> None:
    """4 + 1 + C columns: the person's score is objectness x class, thresholded on the product."""
    rows = np.array(
        [  # cx   cy   w    h   obj  person car
            [100, 100, 40, 80, 0.9, 0.9, 0.1],  # 0.81: kept
            [300, 300, 40, 80, 0.5, 0.9, 0.0],  # 0.45: below 0.5 although each column is not
            [200, 200, 40, 80, 0.95, 0.1, 0.9],  # a car
        ],
        dtype=np.float32,
    )
    boxes, scores = decode_yolo(rows[None], 0, 0.5, 0.45, 300, rows_first=True, objectness=True)
    np.testing.assert_allclose(scores, [0.81], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[80, 60, 120, 140]])
    # read without the objectness column, the same rows give wrong scores: the layout matters
    _, plain = decode_yolo(rows[None], 0, 0.5, 0.45, 300, rows_first=True)
    assert len(plain) == 3  # column 4 (the objectness) read as the person score


def test_yolox_raw_grid_decoded_by_hand() -> None:
    """Raw rows over strides 8 and 16 of a 32 x 32 input: (dx + col) * s, exp(dw) * s."""
    strides, size = (8, 16), 32
    cells = [(s, r, c) for s in strides for r in range(size // s) for c in range(size // s)]
    rows = np.zeros((len(cells), 4 + 1 + 1), np.float32)
    target = cells.index((16, 1, 0))  # stride 16, grid row 1, column 0
    rows[target] = [0.5, 0.25, np.log(2.0), np.log(3.0), 1.0, 0.8]
    boxes, scores = decode_yolo(
        rows[None], 0, 0.5, None, 300, rows_first=True, objectness=True, grid=(strides, size, size)
    )
    cx, cy, w, h = (0 + 0.5) * 16, (1 + 0.25) * 16, 2 * 16, 3 * 16
    np.testing.assert_allclose(boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], rtol=1e-6)
    np.testing.assert_allclose(scores, [0.8], rtol=1e-6)
    with pytest.raises(Exception, match="give 20 grid cells, but the YOLO output has 19 rows"):
        decode_yolo(
            rows[None, :-1],
            0,
            0.5,
            None,
            300,
            rows_first=True,
            objectness=True,
            grid=(strides, size, size),
        )


def test_yolox_bad_outputs_named() -> None:
    rows = np.zeros((1, 10, 5), np.float32)  # 4 + 1 columns: no class left after objectness
    with pytest.raises(Exception, match=r"4 \+ 1 \+ C.*yolo_objectness"):
        decode_yolo(rows, 0, 0.5, None, 300, rows_first=True, objectness=True)
    rows = np.full((1, 3, 7), np.nan, np.float32)
    with pytest.raises(Exception, match="NaN or infinite"):
        decode_yolo(rows, 0, 0.5, None, 300, rows_first=True, objectness=True)
    with pytest.raises(ConfigError, match="yolo_strides .* needs input_height"):
        OnnxDetectorConfig(model="m.onnx", layout="yolo", yolo_strides=[8, 16])
    with pytest.raises(ConfigError, match="letterbox_align must be one of"):
        OnnxDetectorConfig(model="m.onnx", layout="yolo", letterbox_align="middle")


def test_letterbox_top_left_pads_right_and_bottom_only() -> None:
    config = OnnxDetectorConfig(
        model="m.onnx",
        layout="yolo",
        resize="letterbox",
        letterbox_align="top_left",
        input_height=416,
        input_width=416,
    )
    image = np.zeros((108, 192, 3), np.uint8)
    pixels, geometry = fit_image(image, config)
    assert pixels.shape == (416, 416, 3) and (geometry.pad_x, geometry.pad_y) == (0.0, 0.0)
    assert (pixels[234:, :, 0] == 114).all() and (pixels[:234, :, 0] == 0).all()


YOLOX_CONFIG = {
    "layout": "yolo",
    "yolo_rows_first": True,
    "yolo_objectness": True,
    "resize": "letterbox",
    "letterbox_align": "top_left",
    "input_height": 416,
    "input_width": 416,
    "channel_order": "bgr",
    "pixel_scale": 1.0,
    "score_thresh": 0.3,
}


def test_real_yolox_nano_finds_the_prw_pedestrians(tmp_path: Path, real_data) -> None:
    """The real COCO YOLOX-nano on real PRW frames: most annotated people found, few false boxes."""
    from PIL import Image

    from personsearch.boxes import box_iou
    from personsearch.data.prw import read_annotation

    model = real_data("models/yolox-nano-coco") / "yolox_nano.onnx"
    frames = real_data("prw-mini")
    config = write_config(tmp_path / "yolox.yaml", model=str(model), **YOLOX_CONFIG)
    detector = load_onnx_detector(config)
    found = total = false = 0
    for name in sorted(p.name for p in (frames / "frames").iterdir())[:6]:
        image = np.asarray(Image.open(frames / "frames" / name).convert("RGB"))
        boxes, scores = detector.detect(image)
        assert (scores >= 0.3).all() and (scores <= 1).all()
        truth, _ = read_annotation(frames / "annotations" / f"{name}.mat")
        iou = box_iou(truth, boxes) if len(boxes) else np.zeros((len(truth), 0))
        found += int((iou.max(axis=1, initial=0) >= 0.5).sum())
        false += int((iou.max(axis=0, initial=0) < 0.5).sum()) if len(truth) else len(boxes)
        total += len(truth)
    assert found / total > 0.6, (found, total)
    assert false <= total, false
