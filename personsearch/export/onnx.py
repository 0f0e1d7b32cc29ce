"""ONNX export of the re-id net (and an attempt at the detector), checked against PyTorch.

    path = export_reid_run("runs/clsa", "clsa.onnx")      # also writes clsa.onnx.yaml
    embedder = load_onnx_embedder("clsa.onnx.yaml")         # the same features, no torch needed

The re-id net becomes a graph `images` (N x 3 x H x W, dynamic N) -> `embeddings` (N x D, L2-
normalised), written with torch's TorchScript-based exporter (`dynamo=False`: it needs no extra
package and handles these plain convolutional nets). Beside it goes the embedder config
(crop size, ImageNet normalisation) that `personsearch.search.onnx_embedder` reads. Every export
is verified: ONNX Runtime and PyTorch must agree within `PARITY_TOLERANCE` on a check batch, or
nothing is written.

The detector (torchvision's GeneralizedRCNN with the paper's box pooling) is exported per image:
`image` (3 x H x W in [0, 1]) -> `boxes` (K x 4), `scores` (K), with its ONNX detector config
(`personsearch.search.onnx_detector`) beside it. `export_pipeline` exports both models of a
pipeline folder and writes a pipeline.yaml that needs no PyTorch to index, search or serve.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from personsearch.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from personsearch.errors import CheckpointError, PersonSearchError
from personsearch.io import atomic_path
from personsearch.models.saving import load_detector, load_reid_model
from personsearch.search.detectors import hog_available
from personsearch.search.onnx_detector import OnnxDetectorConfig, write_detector_config
from personsearch.search.onnx_embedder import (
    OnnxEmbedderConfig,
    read_embedder_config,
    write_embedder_config,
)
from personsearch.search.onnx_files import import_onnxruntime
from personsearch.search.pipeline import (
    PIPELINE_FILE,
    read_pipeline_spec,
    resolve_spec_path,
    write_pipeline_spec,
)

OPSET = 17
PARITY_TOLERANCE = 1e-4
DEFAULT_CROP_SIZE = (256, 128)


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    config_path: Path | None
    max_diff: float
    check_shape: tuple[int, ...]
    #: detector exports: boxes the check image gave (0: only shapes could be compared)
    compared_boxes: int | None = None


class ParityError(PersonSearchError):
    """The exported graph does not reproduce the PyTorch model within the tolerance."""


def embedder_config_path(onnx_path: str | os.PathLike[str]) -> Path:
    """Where the embedder config of an exported model goes: `<model>.onnx.yaml`."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".yaml")


def export_reid_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    crop_size: Sequence[int] = DEFAULT_CROP_SIZE,
    *,
    name: str = "",
    extra: dict[str, Any] | None = None,
    check_batch: int = 3,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export a re-id model (eval-mode forward: N x 3 x H x W -> N x D) to `path`, with its
    embedder config beside it; both are written only once the parity check passes."""
    height, width = (int(s) for s in crop_size)
    model = model.eval()
    sample = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    with atomic_path(path) as tmp:
        _torch_export(
            model,
            (sample,),
            tmp,
            ["images"],
            ["embeddings"],
            {"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
        check = torch.randn(
            check_batch, 3, height, width, generator=torch.Generator().manual_seed(1)
        )
        with torch.no_grad():
            expected = [model(check)]
        diff = onnx_parity(tmp, {"images": check}, expected, tolerance, what=f"re-id export {path}")
        config = OnnxEmbedderConfig(
            model=str(path),
            input_height=height,
            input_width=width,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pixel_scale=255.0,
            channel_order="rgb",
            name=name or path.stem,
            extra=dict(extra or {}),
        )
        config_path = embedder_config_path(path)
        write_embedder_config(config_path, config)
    return ExportReport(path, config_path, diff, tuple(check.shape))


def export_reid_run(
    run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **kwargs: Any
) -> ExportReport:
    """Export the trained re-id net of a run folder (or model.pt) to `out` (default
    `<run>/reid.onnx`), with the run's crop size."""
    run = Path(run)
    model, meta = load_reid_model(run)
    crop_size = meta.get("crop_size") or DEFAULT_CROP_SIZE
    folder = run if run.is_dir() else run.parent
    out = Path(out) if out is not None else folder / "reid.onnx"
    extra = {"run": str(folder), "dataset": str(meta.get("dataset", ""))}
    head = meta.get("model_config", {}).get("head", "reid")
    return export_reid_onnx(
        model, out, crop_size, name=f"{head}-{folder.name}", extra=extra, **kwargs
    )


def export_detector_run(
    run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **kwargs: Any
) -> ExportReport:
    """Export the trained detector of a run folder (or model.pt) to `out` (default
    `<run>/detector.onnx`)."""
    run = Path(run)
    detector, _ = load_detector(run)
    folder = run if run.is_dir() else run.parent
    out = Path(out) if out is not None else folder / "detector.onnx"
    kwargs.setdefault("name", f"detector-{folder.name}")
    kwargs.setdefault("extra", {"run": str(folder.resolve())})
    return export_detector_onnx(detector, out, **kwargs)


def export_coco_detector(
    name: str,
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    score_thresh: float = 0.5,
    image_size: Sequence[int] = (480, 640),
) -> ExportReport:
    """Export one of torchvision's COCO detectors (`personsearch.models.coco`) as an
    ONNX person detector: the graph keeps the person class only, so it reads as the
    boxes_scores_labels layout without labels, and its YAML is written beside it."""
    from personsearch.search.coco_detectors import CocoDetector

    detector = CocoDetector(name, weights=weights, score_thresh=0.0)
    return export_detector_onnx(
        _PersonsOnly(detector.network),
        out,
        image_size,
        score_thresh=score_thresh,
        name=f"torchvision-{name}",
        extra={"torchvision": name, "weights": detector.weights_source},
        parity_top=20,
    )


class _PersonsOnly(nn.Module):
    """A COCO detector whose outputs keep the person class only (label 1)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from personsearch.models.coco import COCO_PERSON

        results = []
        for output in self.network(images):
            keep = output["labels"] == COCO_PERSON
            results.append({"boxes": output["boxes"][keep], "scores": output["scores"][keep]})
        return results


@dataclass(frozen=True)
class PipelineExport:
    """What `export_pipeline` wrote: the new pipeline.yaml and each model's export report."""

    pipeline_file: Path
    detector: ExportReport | None  #: None: the detector needs no export (hog, whole-image)
    reid: ExportReport | None  #: None: the re-id model already was an ONNX config (copied)


def export_pipeline(
    pipeline: str | os.PathLike[str], out: str | os.PathLike[str]
) -> PipelineExport:
    """Export a pipeline folder's trained detector and re-id net to ONNX in `out`, with their
    configs and a `pipeline.yaml` that `index`, `search`, `serve` and `evaluate` use with no
    PyTorch installed: detector.onnx (+ .yaml), reid.onnx (+ .yaml), the same det_thresh.

    A re-id run folder alone (paired with the baseline detector) exports its re-id net and names
    the baseline detector ("hog" when OpenCV is installed, else "whole-image").
    """
    import shutil
    import tempfile

    source = Path(pipeline)
    spec = read_pipeline_spec(source)
    det_thresh = float(spec.get("det_thresh", 0.5))
    detector, reid = str(spec.get("detector") or ""), str(spec.get("reid") or "")
    onnx_config = (".yaml", ".yml", ".json")
    if detector.endswith(onnx_config):
        raise PersonSearchError(
            f"{source / PIPELINE_FILE}: its detector {detector} is already an ONNX config; "
            "nothing to export (use the folder as it is)"
        )
    if reid in ("", "imagenet"):
        raise PersonSearchError(
            f"{source}: its re-id model is {reid or 'not named'!r}; a pipeline exports a trained "
            "re-id net or an ONNX embedder config"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # everything is written into a scratch folder first: a failed export leaves nothing behind
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        work = Path(scratch)
        detector_report = reid_report = None
        if not detector:
            detector = "hog" if hog_available() else "whole-image"
        elif detector not in ("hog", "whole-image"):
            detector_report = export_detector_run(
                resolve_spec_path(source, detector),
                work / "detector.onnx",
                score_thresh=det_thresh,
            )
            detector = str(out / detector_report.config_path.name)
        if reid.endswith(onnx_config):  # already ONNX: copy the model and its config
            config = read_embedder_config(resolve_spec_path(source, reid))
            model = work / Path(config.model).name
            shutil.copyfile(config.model, model)
            write_embedder_config(
                work / "reid.onnx.yaml", dataclasses.replace(config, model=str(model))
            )
            reid = str(out / "reid.onnx.yaml")
        else:
            reid_report = export_reid_run(resolve_spec_path(source, reid), work / "reid.onnx")
            reid = str(out / reid_report.config_path.name)
        for written in work.iterdir():  # configs name their models relative: they move together
            os.replace(written, out / written.name)
    detector_report, reid_report = (
        None
        if report is None
        else dataclasses.replace(
            report, path=out / report.path.name, config_path=out / report.config_path.name
        )
        for report in (detector_report, reid_report)
    )
    path = write_pipeline_spec(out, detector, reid, det_thresh)
    return PipelineExport(path, detector_report, reid_report)


def run_task(run: str | os.PathLike[str]) -> str:
    """The task ("reid", "detector", ...) a run folder's model.pt was trained for."""
    path = Path(run)
    path = path / "model.pt" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{path} not found: did the training run finish?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated or foreign files raise many types
        raise CheckpointError(f"cannot read model file {path}: {error}") from error
    if not isinstance(state, dict) or "task" not in state:
        raise CheckpointError(f"{path} is not a personsearch model file")
    return str(state["task"])


def export_detector_onnx(
    detector: nn.Module,
    path: str | os.PathLike[str],
    image_size: Sequence[int] = (480, 640),
    *,
    score_thresh: float = 0.5,
    name: str = "",
    extra: dict[str, Any] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    parity_top: int | None = None,
) -> ExportReport:
    """Export a torchvision-style detector (eval forward: list of 3 x H x W images -> list of
    {"boxes", "scores"}) for one image per call, checked on a second image of another size, with
    its ONNX detector config (`<model>.onnx.yaml`: layout boxes_scores_labels, the image fed as
    it is, keeping boxes scored at least `score_thresh`) beside it. `parity_top` compares the
    best-scored detections only (multi-class detectors, whose lowest boxes sit at the score and
    NMS boundaries where float noise may keep one more or one fewer)."""
    detector = detector.eval()
    height, width = (int(s) for s in image_size)
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(3, height, width, generator=generator)
    wrapped = _SingleImageDetector(detector).eval()
    path = Path(path)
    with atomic_path(path) as tmp:
        _torch_export(
            wrapped,
            (sample,),
            tmp,
            ["image"],
            ["boxes", "scores"],
            {
                "image": {1: "height", 2: "width"},
                "boxes": {0: "detections"},
                "scores": {0: "detections"},
            },
        )
        check = torch.rand(3, height + 32, width - 64, generator=generator)
        with torch.no_grad():
            expected = list(wrapped(check))
        # boxes are in pixels: their tolerance is relative to the image size
        scales = (float(max(check.shape[1:])), 1.0)
        diff = onnx_parity(
            tmp,
            {"image": check},
            expected,
            tolerance,
            scales=scales,
            what=f"detector export {path}",
            top=parity_top,
        )
        config = OnnxDetectorConfig(
            model=str(path),
            layout="boxes_scores_labels",
            resize="none",
            batch_axis=False,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            pixel_scale=255.0,
            labels_output=None,
            score_thresh=score_thresh,
            name=name or path.stem,
            extra=dict(extra or {}),
        )
        config_path = embedder_config_path(path)
        write_detector_config(config_path, config)
    return ExportReport(path, config_path, diff, tuple(check.shape), len(expected[0]))


class _SingleImageDetector(nn.Module):
    """One image in, (boxes, scores) out: the tensor-only signature an ONNX graph needs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (result,) = self.detector([image])
        return result["boxes"], result["scores"]


def _torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter's deprecation and tracer warnings are expected here
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        except Exception as error:  # the exporter raises many types for unsupported operators
            raise PersonSearchError(
                f"torch.onnx.export could not export {type(module).__name__}: "
                f"{type(error).__name__}: {error}"
            ) from error


def onnx_parity(
    path: str | os.PathLike[str],
    inputs: dict[str, torch.Tensor],
    expected: Sequence[torch.Tensor],
    tolerance: float = PARITY_TOLERANCE,
    *,
    scales: Sequence[float] | None = None,
    what: str = "ONNX export",
    top: int | None = None,
) -> float:
    """Run the ONNX graph at `path` on `inputs` and compare with `expected` (the PyTorch outputs,
    in graph output order); return the largest difference, each output's divided by its entry in
    `scales` (default 1: absolute), and raise ParityError above `tolerance` or on a shape
    mismatch. `top`: the outputs are (boxes, scores) sorted best first, compared as sets over
    the best `top` (see `_detection_set_parity`)."""
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise CheckpointError(f"{what}: ONNX Runtime cannot load the graph: {error}") from error
    feeds = {name: tensor.detach().cpu().numpy() for name, tensor in inputs.items()}
    outputs = session.run(None, feeds)
    if top is not None:
        return _detection_set_parity(outputs, expected, top, tolerance, scales, what)
    worst = 0.0
    scales = scales or [1.0] * len(expected)
    for output, reference, scale in zip(outputs, expected, scales, strict=True):
        reference = reference.detach().cpu().numpy()
        if output.shape != reference.shape:
            raise ParityError(
                f"{what}: ONNX Runtime gives shape {output.shape}, PyTorch {reference.shape}"
            )
        if output.size:
            difference = np.abs(output.astype(np.float64) - reference).max() / scale
            worst = max(worst, float(difference))
    if worst > tolerance:
        raise ParityError(
            f"{what}: ONNX Runtime differs from PyTorch by up to {worst:.3g} (> {tolerance:g}"
            f"{', relative to the image size for boxes' if scales[0] != 1.0 else ''})"
        )
    return worst


def _detection_set_parity(
    outputs: Sequence[np.ndarray],
    expected: Sequence[torch.Tensor],
    top: int,
    tolerance: float,
    scales: Sequence[float] | None,
    what: str,
) -> float:
    """(boxes, scores) compared as sets over the best `top` detections: equal sorted scores, and
    each ONNX box equal to a PyTorch box of (nearly) the same score. Detections whose scores
    tie may come out in either order, and the last few may differ at the score and NMS
    boundaries, so order and count beyond `top` are not compared."""
    boxes, scores = (np.asarray(o, np.float64) for o in outputs[:2])
    ref_boxes, ref_scores = (t.detach().cpu().numpy().astype(np.float64) for t in expected[:2])
    rows = min(top, len(scores), len(ref_scores))
    scale = (scales or [1.0])[0]
    worst = float(
        np.abs(np.sort(scores)[::-1][:rows] - np.sort(ref_scores)[::-1][:rows]).max(initial=0.0)
    )
    for box, score in zip(boxes[:rows], scores[:rows], strict=True):
        near = np.abs(ref_scores - score) <= max(tolerance, 1e-6) * 10
        if not near.any():
            raise ParityError(
                f"{what}: ONNX Runtime scores a box {score:.6f}, PyTorch has no box scored so"
            )
        worst = max(worst, float(np.abs(ref_boxes[near] - box).max(axis=1).min() / scale))
    if worst > tolerance:
        raise ParityError(
            f"{what}: ONNX Runtime differs from PyTorch by up to {worst:.3g} "
            f"(> {tolerance:g}) over the best {rows} detections"
        )
    return worst
