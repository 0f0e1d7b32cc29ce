"""The networks: re-id models (CLSA and the Table 4 baselines), their backbones and heads, the
person detector, and the trained-model file (docs/models.md, docs/detector.md).

    from personsearch.models import ReidConfig, ReidModel

Each name is imported on first use (they import torch).
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.models.reid": (
            "ReidConfig",
            "ReidModel",
            "ReidOutputs",
            "HEAD_SPECS",
            "build_reid_model",
        ),
        "personsearch.models.heads": ("ReidHead", "PyramidHead"),
        "personsearch.models.backbones": ("Backbone", "BACKBONE_SPECS", "build_backbone"),
        "personsearch.models.detector": ("DetectorConfig", "PersonDetector", "build_detector"),
        "personsearch.models.saving": (
            "load_reid_model",
            "save_reid_model",
            "load_detector",
            "save_detector",
        ),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
