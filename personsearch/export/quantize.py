"""int8 ONNX pipelines: ONNX Runtime static quantisation, calibrated on the user's own images.

    quantize_pipeline("runs/pipeline-onnx", "runs/pipeline-int8", calibration="frames/")

Both models of an exported ONNX pipeline (`personsearch export onnx --pipeline`) become QDQ
graphs with int8 weights (per output channel: per-tensor scales ruin MobileNetV2's depthwise
convolutions) and uint8 activations whose ranges come from running the fp32 models on
calibration scenes (MinMax): the detector on the scenes, the re-id net on the persons the fp32
detector finds in them. Dynamic quantisation (weights only) is not offered: on this project's
models it was 6-9x slower than fp32 and lost every detection (benchmarks/onnx_quantize.py).

Needs the `onnx` package besides ONNX Runtime (pip install 'personsearch[export]'), no PyTorch.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.errors import PersonSearchError

#: Calibration needs enough variety of scale and content; more costs time, not accuracy.
MAX_CALIBRATION_IMAGES = 64
MIN_CALIBRATION_IMAGES = 4


def quantize_pipeline(
    pipeline: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: str | os.PathLike[str],
    *,
    max_images: int = MAX_CALIBRATION_IMAGES,
) -> Path:
    """Write an int8 copy of the ONNX pipeline folder `pipeline` into `out`; returns its
    pipeline.yaml. `calibration` is a folder of scene images like those to be searched."""
    from personsearch.search.onnx_detector import (
        OnnxDetector,
        read_detector_config,
        write_detector_config,
    )
    from personsearch.search.onnx_embedder import (
        OnnxEmbedder,
        read_embedder_config,
        write_embedder_config,
    )
    from personsearch.search.pipeline import read_pipeline_spec, write_pipeline_spec

    source = Path(pipeline)
    spec = read_pipeline_spec(source)
    detector_file, reid_file = str(spec.get("detector") or ""), str(spec.get("reid") or "")
    if not detector_file.endswith((".yaml", ".yml", ".json")) or not reid_file.endswith(
        (".yaml", ".yml", ".json")
    ):
        raise PersonSearchError(
            f"{source} is not an ONNX pipeline (its detector and reid must name ONNX configs): "
            "export it first with `personsearch export onnx --pipeline`"
        )
    det_config = read_detector_config(source / detector_file)
    reid_config = read_embedder_config(source / reid_file)
    images = calibration_images(calibration, max_images)
    detector = OnnxDetector(det_config)
    embedder = OnnxEmbedder(reid_config)
    det_feeds = [{detector._input: detector.network_input(image)[0]} for image in images]
    crops = _detected_crops(detector, images)
    if not crops:
        raise PersonSearchError(
            f"the detector found no person in the {len(images)} calibration images of "
            f"{calibration}: give scenes with people in them"
        )
    reid_feeds = [{embedder._input.name: batch} for batch in _crop_batches(embedder, crops)]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det_model = out / "detector.int8.onnx"
    reid_model = out / "reid.int8.onnx"
    quantize_model(Path(det_config.model), det_model, det_feeds)
    quantize_model(Path(reid_config.model), reid_model, reid_feeds)
    note = {"quantized": "int8 static QDQ, per-channel weights",
            "calibration_images": len(images)}
    det_yaml, reid_yaml = out / "detector.int8.onnx.yaml", out / "reid.int8.onnx.yaml"
    write_detector_config(det_yaml, dataclasses.replace(
        det_config, model=str(det_model), extra={**det_config.extra, **note}))
    write_embedder_config(reid_yaml, dataclasses.replace(
        reid_config, model=str(reid_model), extra={**reid_config.extra, **note}))
    return write_pipeline_spec(out, det_yaml, reid_yaml, float(spec.get("det_thresh", 0.5)))


def quantize_model(source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """Static QDQ int8 quantisation of one ONNX model, calibrated on `feeds` (written atomically)."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise PersonSearchError(
            f"int8 quantisation needs the onnx package ({error.name} is missing): "
            "pip install 'personsearch[export]'"
        ) from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    from personsearch.io import atomic_path

    with tempfile.TemporaryDirectory(prefix="quantize-") as work, atomic_path(target) as tmp:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True,  # per-tensor scales ruin depthwise convolutions
            )
        except Exception as error:  # the quantiser raises many types on graphs it cannot take
            raise PersonSearchError(
                f"ONNX Runtime could not quantise {source}: {type(error).__name__}: {error}"
            ) from error
        if not Path(tmp).is_file():
            shutil.copyfile(prepared, tmp)  # pragma: no cover - quantize_static always writes


def calibration_images(folder: str | os.PathLike[str], max_images: int) -> list[np.ndarray]:
    """Up to `max_images` readable images of `folder` (spread over its sorted listing)."""
    from personsearch.data.images import read_rgb
    from personsearch.search.searcher import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise PersonSearchError(f"calibration folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) > max_images:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_images).round().astype(int)]
    images = []
    for path in paths:
        try:
            images.append(read_rgb(path))
        except Exception:  # noqa: BLE001, S112 - a bad calibration image is skipped, not fatal
            continue
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise PersonSearchError(
            f"{root} holds {len(images)} readable images; calibration needs at least "
            f"{MIN_CALIBRATION_IMAGES} scenes like those to be searched"
        )
    return images


def _detected_crops(detector: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    from personsearch.search.searcher import crop_box

    crops = []
    for image in images:
        boxes, _ = detector.detect(image)
        crops.extend(crop_box(image, box) for box in boxes)
    return crops[: 8 * MAX_CALIBRATION_IMAGES]


def _crop_batches(embedder: Any, crops: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    from personsearch.data.preprocess import preprocess_crops

    c = embedder.config
    for start in range(0, len(crops), 16):
        yield preprocess_crops(crops[start : start + 16], embedder.height, embedder.width,
                               c.mean, c.std, c.pixel_scale, c.channel_order)
