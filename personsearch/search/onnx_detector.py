"""Bring your own person detector: any ONNX detection graph, described by a small YAML file.

A pipeline's `detector:` may name such a file (`pipeline.yaml`, see `personsearch.search.pipeline`),
so a detector exported from torchvision, a YOLO-family model or `personsearch export onnx` finds
the people that the re-id net then embeds, with no PyTorch installed. The file says how to feed
the graph and how to read what it returns:

    model: yolov8n.onnx          # path, relative to this file
    layout: yolo                 # or boxes_scores_labels
    resize: letterbox            # letterbox | stretch | keep_ratio | none
    input_height: 640            # letterbox / stretch: the graph's input size
    input_width: 640
    pad_value: 114               # letterbox: the grey of the padding (0..255)
    letterbox_align: center      # letterbox: center (YOLOv5/v8) or top_left (YOLOX)
    mean: [0, 0, 0]              # per channel, in the units of pixel_scale
    std: [1, 1, 1]
    pixel_scale: 255.0           # pixels are divided by this first
    channel_order: rgb           # or bgr
    batch_axis: true             # the input is 1 x 3 x H x W (false: 3 x H x W)
    person_class: 0              # the class id (yolo: score column) that is a person
    score_thresh: 0.5            # keep detections scored at least this
    nms_iou: 0.45                # yolo: NumPy NMS at this IoU (boxes_scores_labels: null = none)
    max_detections: 300

Layouts:
- `boxes_scores_labels`: outputs `boxes` (K x 4, x1 y1 x2 y2 in input pixels), `scores` (K) and
  optionally `labels` (K; person = `person_class`, default 1 as in torchvision's COCO models).
  Name them with `boxes_output`, `scores_output`, `labels_output` when the graph uses other names.
  `personsearch export onnx` writes this layout for the project's detector (no labels: every box
  is a person), with `resize: none`: its graph resizes and normalises inside.
- `yolo`: one output, 1 x (4 + C) x N (or 1 x N x (4 + C) with `yolo_rows_first: true`) of box
  centre x, centre y, width, height in input pixels, then C class scores; the
  person score is column `person_class`. Boxes are kept from `score_thresh` and suppressed by
  NumPy NMS, class-agnostic since only persons remain.
  YOLOX-style heads: `yolo_objectness: true` says column 4 is the objectness and the C class
  scores follow it (4 + 1 + C columns); a person's score is then objectness x class score, as
  YOLOX scores its detections (the thresholds YOLOX is used at, 0.25-0.3 in its demo, apply to
  that product). `yolo_strides: [8, 16, 32]` says the output is the raw grid (YOLOX exported
  with `decode_in_inference=False`): rows run over the stride-8 grid, then 16, then 32, each
  row-major over the input, and hold offsets and log-sizes in grid cells, decoded here as
  cx = (dx + column) x stride, w = exp(dw) x stride (needs input_height and input_width).
  A real YOLOX-nano (416 x 416, BGR, 0-255, letterboxed top-left with 114):

      model: yolox_nano.onnx
      layout: yolo
      yolo_rows_first: true
      yolo_objectness: true
      resize: letterbox
      letterbox_align: top_left
      input_height: 416
      input_width: 416
      channel_order: bgr
      pixel_scale: 1.0
      score_thresh: 0.3

Resizing: `letterbox` scales the image to fit input_height x input_width keeping its aspect
ratio and pads the rest evenly on both sides (as YOLO's exporters expect); `stretch` resizes to
exactly that size; `keep_ratio` scales so the shorter side is `shorter_side` unless the longer
then passes `longer_side` (torchvision's rule), no padding; `none` feeds the image as it is.
Boxes are mapped back to the original image's pixels and clipped to it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from personsearch.boxes import box_iou
from personsearch.data.preprocess import normalise
from personsearch.errors import ConfigError, PersonSearchError
from personsearch.io import file_hash
from personsearch.search.onnx_files import (
    ModelConfigFile,
    open_session,
    pick_input,
    read_config_file,
    write_config_file,
)

LAYOUTS = ("boxes_scores_labels", "yolo")
RESIZE_MODES = ("letterbox", "stretch", "keep_ratio", "none")
LETTERBOX_ALIGNS = ("center", "top_left")
#: settings added after the first release, left out of the fingerprint at their default
LATER_DEFAULTS = {"letterbox_align": "center", "yolo_objectness": False, "yolo_strides": None}


@dataclass(frozen=True)
class OnnxDetectorConfig(ModelConfigFile):
    """How to feed an ONNX detector and read its outputs; see the module docstring."""

    KIND = "ONNX detector"

    model: str
    layout: str = "boxes_scores_labels"
    resize: str = "none"
    input_height: int | None = None
    input_width: int | None = None
    shorter_side: int | None = None
    longer_side: int | None = None
    pad_value: float = 114.0
    letterbox_align: str = "center"  #: where the letterboxed image sits: "center" or "top_left"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pixel_scale: float = 255.0
    channel_order: str = "rgb"
    batch_axis: bool = True
    person_class: int | None = None  #: default: 1 (boxes_scores_labels), 0 (yolo)
    score_thresh: float = 0.5
    nms_iou: float | None = None  #: default: 0.45 for yolo, none for boxes_scores_labels
    max_detections: int = 300
    input_name: str | None = None
    boxes_output: str = "boxes"
    scores_output: str = "scores"
    labels_output: str | None = "labels"  #: read when the graph has it
    output_name: str | None = None  #: yolo: the output to read (default: the first)
    yolo_rows_first: bool = False  #: yolo: the output is 1 x N x (4 + C)
    yolo_objectness: bool = False  #: yolo: column 4 is the objectness (YOLOX: 4 + 1 + C columns)
    yolo_strides: tuple[int, ...] | None = None  #: yolo: raw grid outputs at these strides
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [*self._check_choices(), *self._check_sizes(), *self._check_numbers()]
        if problems:
            raise ConfigError("invalid ONNX detector config: " + "; ".join(problems))
        if self.person_class is None:
            object.__setattr__(self, "person_class", 0 if self.layout == "yolo" else 1)
        if self.nms_iou is None and self.layout == "yolo":
            object.__setattr__(self, "nms_iou", 0.45)

    def _check_choices(self) -> list[str]:
        problems = []
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.channel_order not in ("rgb", "bgr"):
            problems.append(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.letterbox_align not in LETTERBOX_ALIGNS:
            problems.append(
                f"letterbox_align must be one of {', '.join(LETTERBOX_ALIGNS)}, got "
                f"{self.letterbox_align!r}"
            )
        for key in ("batch_axis", "yolo_rows_first", "yolo_objectness"):
            if not isinstance(getattr(self, key), bool):
                problems.append(f"{key} must be true or false, got {getattr(self, key)!r}")
        return problems

    def _check_sizes(self) -> list[str]:
        problems = []
        for key in (
            "input_height",
            "input_width",
            "shorter_side",
            "longer_side",
            "max_detections",
            "person_class",
        ):
            value = getattr(self, key)
            lowest = 0 if key == "person_class" else 1
            if value is not None and (not _is_int(value) or value < lowest):
                problems.append(f"{key} must be an integer >= {lowest}, got {value!r}")
        if self.resize in ("letterbox", "stretch") and (
            self.input_height is None or self.input_width is None
        ):
            problems.append(f"resize: {self.resize} needs input_height and input_width")
        if self.resize == "keep_ratio" and self.shorter_side is None:
            problems.append("resize: keep_ratio needs shorter_side (and optionally longer_side)")
        if self.yolo_strides is not None:
            strides = self.yolo_strides
            if not (
                isinstance(strides, list | tuple)
                and strides
                and all(_is_int(v) and v >= 1 for v in strides)
            ):
                problems.append(f"yolo_strides must be a list of integers >= 1, got {strides!r}")
            else:
                object.__setattr__(self, "yolo_strides", tuple(strides))
                if self.input_height is None or self.input_width is None:
                    problems.append(
                        "yolo_strides (raw grid outputs) needs input_height and "
                        "input_width: the grid is laid over the input"
                    )
        return problems

    def _check_numbers(self) -> list[str]:
        problems = []
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not (
                isinstance(value, list | tuple)
                and len(value) == 3
                and all(_is_number(v) for v in value)
            ):
                problems.append(f"{key} must be 3 finite numbers (one per channel), got {value!r}")
            else:
                object.__setattr__(self, key, tuple(float(v) for v in value))
        if not problems and min(self.std) <= 0:
            problems.append(f"std must be positive, got {list(self.std)}")
        if not _is_number(self.pixel_scale) or self.pixel_scale <= 0:
            problems.append(f"pixel_scale must be a positive number, got {self.pixel_scale!r}")
        if not _is_number(self.pad_value) or not 0 <= self.pad_value <= 255:
            problems.append(f"pad_value must be a number in [0, 255], got {self.pad_value!r}")
        if not _is_number(self.score_thresh) or not 0 <= self.score_thresh <= 1:
            problems.append(f"score_thresh must be a number in [0, 1], got {self.score_thresh!r}")
        if self.nms_iou is not None and (not _is_number(self.nms_iou) or not 0 < self.nms_iou <= 1):
            problems.append(f"nms_iou must be a number in (0, 1] or null, got {self.nms_iou!r}")
        return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_detector_config(path: str | os.PathLike[str]) -> OnnxDetectorConfig:
    """Read a YAML/JSON detector config; its `model` path becomes relative to the file."""
    return read_config_file(path, OnnxDetectorConfig.from_dict, "ONNX detector")


def write_detector_config(path: str | os.PathLike[str], config: OnnxDetectorConfig) -> None:
    """Write `config` as YAML (atomically), the model path relative when it lies beside the file."""
    write_config_file(path, config)


@dataclass(frozen=True)
class Geometry:
    """How an image was fitted to the graph's input: input = original * scale + pad."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Boxes in input pixels -> original pixels, clipped to the image (height, width)."""
        out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        height, width = image_size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out.astype(np.float32)


def fit_image(image: np.ndarray, config: OnnxDetectorConfig) -> tuple[np.ndarray, Geometry]:
    """An H x W x 3 uint8 image -> the resized, padded H' x W' x 3 float32 pixels and geometry."""
    height, width = image.shape[:2]
    mode = config.resize
    if mode == "none":
        return image.astype(np.float32), Geometry(1.0, 1.0, 0.0, 0.0)
    if mode == "keep_ratio":
        scale = config.shorter_side / min(height, width)
        if config.longer_side is not None:
            scale = min(scale, config.longer_side / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = _resize(image, size)
        return resized, Geometry(size[0] / width, size[1] / height, 0.0, 0.0)
    target_h, target_w = config.input_height, config.input_width
    if mode == "stretch":
        return _resize(image, (target_w, target_h)), Geometry(
            target_w / width, target_h / height, 0.0, 0.0
        )
    scale = min(target_h / height, target_w / width)  # letterbox
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (target_w - new_w) // 2, (target_h - new_h) // 2
    if config.letterbox_align == "top_left":  # YOLOX pads only right and bottom
        pad_x = pad_y = 0
    canvas = np.full((target_h, target_w, 3), float(config.pad_value), dtype=np.float32)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = _resize(image, (new_w, new_h))
    return canvas, Geometry(new_w / width, new_h / height, float(pad_x), float(pad_y))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image.astype(np.float32)
    resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def decode_yolo(
    output: np.ndarray,
    person_class: int,
    score_thresh: float,
    nms_iou: float | None,
    max_detections: int,
    rows_first: bool = False,
    objectness: bool = False,
    grid: tuple[tuple[int, ...], int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A YOLO output (1 x (4+C) x N, or 1 x N x (4+C) when `rows_first`; 4 + 1 + C columns with
    `objectness`) -> person boxes (x1 y1 x2 y2) and scores, thresholded and suppressed.

    `grid` = (strides, input_height, input_width) decodes raw grid outputs first
    (`decode_grid`). With `objectness` a person's score is objectness x class score.
    """
    array = np.asarray(output, dtype=np.float32)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise PersonSearchError(f"a YOLO output must hold one image, got shape {array.shape}")
        array = array[0]
    rows = array if rows_first else array.T  # N x (4 [+ 1] + C)
    first_class = 5 if objectness else 4
    if rows.ndim != 2 or rows.shape[1] < first_class + 1:
        columns = "4 + 1 + C" if objectness else "4 + C"
        layout = f"1 x N x ({columns})" if rows_first else f"1 x ({columns}) x N"
        raise PersonSearchError(
            f"a YOLO output must be {layout} with C >= 1 classes, got shape {np.shape(output)}"
            + (" (yolo_objectness: true adds the objectness column)" if objectness else "")
        )
    classes = rows.shape[1] - first_class
    if person_class >= classes:
        raise ConfigError(
            f"person_class {person_class} is out of range: the YOLO output has {classes} classes"
            + (" after its objectness column" if objectness else "")
        )
    if not np.isfinite(rows).all():
        raise PersonSearchError(
            "the YOLO output holds NaN or infinite values: the model or its export is broken"
        )
    if grid is not None:
        rows = decode_grid(rows, *grid)
    scores = rows[:, first_class + person_class]
    if objectness:
        scores = scores * rows[:, 4]
    keep = scores >= score_thresh
    cx, cy, w, h = (rows[keep, i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return _suppress(boxes, scores[keep], nms_iou, max_detections)


def decode_grid(
    rows: np.ndarray, strides: Sequence[int], input_height: int, input_width: int
) -> np.ndarray:
    """Raw YOLOX grid rows (dx, dy, log w, log h in grid cells, then scores) -> rows whose first
    four columns are centre x, centre y, width, height in input pixels.

    Rows run over each stride's grid in turn (stride 8 first), row-major: row r of the stride-s
    block is the cell (r // (W / s), r % (W / s)), as YOLOX's `decode_outputs` lays them out.
    """
    centres, scales = [], []
    for stride in strides:
        grid_h, grid_w = input_height // stride, input_width // stride
        ys, xs = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
        centres.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        scales.append(np.full(grid_h * grid_w, stride))
    centre = np.concatenate(centres).astype(np.float32)
    stride = np.concatenate(scales).astype(np.float32)[:, None]
    if len(centre) != len(rows):
        raise PersonSearchError(
            f"yolo_strides {list(strides)} on a {input_height} x {input_width} input give "
            f"{len(centre)} grid cells, but the YOLO output has {len(rows)} rows: the strides or "
            "the input size do not fit this model"
        )
    out = rows.astype(np.float32).copy()
    out[:, :2] = (rows[:, :2] + centre) * stride
    with np.errstate(over="ignore"):
        out[:, 2:4] = np.exp(rows[:, 2:4]) * stride
    return out


def decode_boxes_scores_labels(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None,
    person_class: int,
    score_thresh: float,
    nms_iou: float | None,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray]:
    """torchvision-style outputs -> person boxes and scores (labels absent: all persons)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise PersonSearchError(
            f"the detector returned {len(boxes)} boxes but {len(scores)} scores"
        )
    keep = scores >= score_thresh
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(scores):
            raise PersonSearchError(
                f"the detector returned {len(labels)} labels for {len(scores)} scores"
            )
        keep &= labels == person_class
    return _suppress(boxes[keep], scores[keep], nms_iou, max_detections)


def _suppress(
    boxes: np.ndarray, scores: np.ndarray, nms_iou: float | None, max_detections: int
) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    if nms_iou is not None:
        order = order[nms(boxes[order], scores[order], nms_iou)]
    order = order[:max_detections]
    return boxes[order].astype(np.float32), scores[order].astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped when its IoU (continuous coordinates) with a kept, higher-scored box is
    above `iou_threshold`, as torchvision.ops.nms does.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        iou = box_iou(boxes[best], boxes[rest])[0]
        order = rest[iou <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)


class OnnxDetector:
    """A `Detector` running an ONNX detection graph with ONNX Runtime on the CPU."""

    def __init__(self, config: OnnxDetectorConfig, *, threads: int | None = None) -> None:
        model = Path(config.model)
        self._session = open_session(model, threads, "ONNX detector")
        self.config = config
        self._input = pick_input(self._session, config.input_name, config.model).name
        self._outputs = self._pick_outputs()
        self.score_thresh = float(config.score_thresh)
        self.fingerprint = self._fingerprint(model)

    def _pick_outputs(self) -> list[str]:
        names = [o.name for o in self._session.get_outputs()]
        c = self.config
        if c.layout == "yolo":
            wanted = [c.output_name or names[0]]
        else:
            wanted = [c.boxes_output, c.scores_output]
            if c.labels_output and c.labels_output in names:
                wanted.append(c.labels_output)
        missing = [name for name in wanted if name not in names]
        if missing:
            raise ConfigError(
                f"{c.model}: no output named {', '.join(map(repr, missing))}; outputs are {names} "
                f"(layout {c.layout}: set {'output_name' if c.layout == 'yolo' else 'boxes_output / scores_output'})"
            )
        return wanted

    def _fingerprint(self, model: Path) -> str:
        digest = file_hash(model)
        settings = {
            k: v for k, v in self.config.to_dict().items() if k not in ("model", "name", "extra")
        }
        for key, default in LATER_DEFAULTS.items():  # indexes built before these keys existed
            if settings.get(key) == default:  # keep their fingerprint
                settings.pop(key, None)
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return f"onnx-detector:{self.config.name or model.stem}:{digest.hexdigest()[:16]}"

    def network_input(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """The tensor fed to the graph for one H x W x 3 uint8 RGB image, and its geometry."""
        c = self.config
        pixels, geometry = fit_image(np.asarray(image, dtype=np.uint8), c)
        tensor = normalise(pixels, c.mean, c.std, c.pixel_scale, c.channel_order)
        return (tensor[None] if c.batch_axis else tensor), geometry

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(
                f"an image must be a non-empty H x W x 3 array, got shape {image.shape}"
            )
        tensor, geometry = self.network_input(image)
        outputs = self._session.run(self._outputs, {self._input: tensor})
        c = self.config
        if c.layout == "yolo":
            grid = (
                None if c.yolo_strides is None else (c.yolo_strides, c.input_height, c.input_width)
            )
            boxes, scores = decode_yolo(
                outputs[0],
                c.person_class,
                c.score_thresh,
                c.nms_iou,
                c.max_detections,
                c.yolo_rows_first,
                c.yolo_objectness,
                grid,
            )
        else:
            labels = outputs[2] if len(outputs) > 2 else None
            boxes, scores = decode_boxes_scores_labels(
                outputs[0],
                outputs[1],
                labels,
                c.person_class,
                c.score_thresh,
                c.nms_iou,
                c.max_detections,
            )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise PersonSearchError(
                f"ONNX detector {c.model} returned NaN or infinite boxes or scores: the model or "
                "its export is broken, or its config's mean/std/pixel_scale do not fit it"
            )
        return geometry.to_original(boxes, image.shape[:2]), scores

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.detect(image) for image in images]


def load_onnx_detector(
    config_path: str | os.PathLike[str], *, threads: int | None = None
) -> OnnxDetector:
    """The detector described by a YAML/JSON config file (see the module docstring)."""
    return OnnxDetector(read_detector_config(config_path), threads=threads)
