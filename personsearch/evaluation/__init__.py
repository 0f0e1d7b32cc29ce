"""The evaluation of person search, detection and re-id, as the field computes it: pure NumPy,
importing nothing from the packages built on it (docs/evaluation.md).

    from personsearch.evaluation import GalleryDetections, evaluate_search

Each name is imported on first use.
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.evaluation.search": (
            "GalleryDetections",
            "SearchScores",
            "Duplicates",
            "evaluate_search",
            "similarity",
        ),
        "personsearch.evaluation.results_file": (
            "ResultsFile",
            "load_results",
            "validate_results",
            "save_results",
        ),
        "personsearch.evaluation.search_protocols": (
            "GalleryEvaluation",
            "SearchEvaluation",
            "evaluate_protocols",
            "evaluate_results_file",
            "write_per_query",
        ),
        "personsearch.evaluation.cbgm": ("CBGMOptions", "QueryContext"),
        "personsearch.evaluation.scale_gap": ("ScaleBin", "search_by_scale", "reid_by_scale"),
        "personsearch.evaluation.detection": ("DetectionResult", "evaluate_detection"),
        "personsearch.evaluation.reid": ("ReidResult", "evaluate_reid"),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
