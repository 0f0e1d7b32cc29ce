"""An exported ONNX pipeline from random-weight models, for the small-install (no PyTorch) checks.

    python tests/onnx_pipeline_fixture.py OUTDIR      # writes OUTDIR/onnx/pipeline.yaml (+ models)

Used by tests/test_small_install.py and by CI's second venv (.ci/small_install.sh), which has
no PyTorch and so cannot build the pipeline itself. The models are untrained: what is checked is
that every command runs on ONNX Runtime alone, not what it finds.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: Detections per image of the random detector, kept small so the smoke stays fast.
DETECTIONS_PER_IMAGE = 5


def make_onnx_pipeline(out: Path) -> Path:
    """Random-weight detector and re-id runs, a pipeline.yaml pairing them, and its ONNX export
    in `out / "onnx"` (returned)."""
    import torch

    from personsearch.config import load_config
    from personsearch.export.onnx import export_pipeline
    from personsearch.models.detector import DetectorConfig, build_detector
    from personsearch.models.reid import build_reid_model
    from personsearch.models.saving import save_detector, save_reid_model
    from personsearch.search.pipeline import write_pipeline_spec

    torch.manual_seed(0)
    reid_run = out / "reid-run"
    reid_run.mkdir(parents=True, exist_ok=True)
    config = load_config("synthetic-reid", ["data.crop_height=64", "data.crop_width=32"])
    model = build_reid_model(
        {
            "head": "clsa",
            "backbone": "resnet18",
            "pretrained": False,
            "feature_dim": 32,
            "num_classes": 5,
        }
    ).eval()
    save_reid_model(reid_run / "model.pt", model, config, pids=[1, 2, 3, 4, 5])
    (reid_run / "config.yaml").write_text("task: reid\n")

    detector_run = out / "detector-run"
    detector_run.mkdir(parents=True, exist_ok=True)
    detector = build_detector(
        DetectorConfig(
            backbone="resnet18",
            pretrained=False,
            min_size=160,
            max_size=240,
            score_thresh=0.0,
            detections_per_img=DETECTIONS_PER_IMAGE,
        )
    ).eval()
    save_detector(detector_run / "model.pt", detector, load_config("synthetic-detector"))

    torch_pipeline = out / "torch"
    write_pipeline_spec(torch_pipeline, detector_run, reid_run, det_thresh=0.0)
    onnx_pipeline = out / "onnx"
    export_pipeline(torch_pipeline, onnx_pipeline)
    return onnx_pipeline


if __name__ == "__main__":
    print(make_onnx_pipeline(Path(sys.argv[1])))
