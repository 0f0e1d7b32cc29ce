"""Exporting trained models for other runtimes (ONNX); see personsearch.export.onnx.

    from personsearch.export import export_pipeline

Each name is imported on first use (they need the `train` and `export` extras).
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.export.onnx": (
            "export_pipeline",
            "export_reid_run",
            "export_detector_run",
            "export_coco_detector",
            "ExportReport",
            "PipelineExport",
            "ParityError",
        ),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
