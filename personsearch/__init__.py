"""personsearch: find a person in a large set of scene images (CLSA, ECCV 2018, and beyond).

The names a user needs are importable from here (and, by topic, from the subpackages
`personsearch.search`, `.evaluation`, `.models`, `.data`, `.serve`, `.export`, `.report`):

    from personsearch import PersonSearcher, load_pipeline

Each is imported on first use, so `import personsearch` loads no numpy, torch or FAISS.
"""

from personsearch._exports import export_table, lazy_exports

__version__ = "0.1.0"

_EXPORTS = export_table(
    {
        "personsearch.errors": ("PersonSearchError", "ConfigError", "DatasetError"),
        "personsearch.search.pipeline": (
            "Pipeline",
            "load_pipeline",
            "baseline_pipeline",
            "write_pipeline_spec",
        ),
        "personsearch.search.searcher": ("PersonSearcher",),
        "personsearch.search.video_indexing": ("VideoSampling",),
        "personsearch.search.index": ("GalleryIndex", "SearchHit"),
        "personsearch.search.ray_indexing": ("RunPipeline", "index_with_ray"),
        "personsearch.evaluation.search": ("GalleryDetections", "SearchScores", "evaluate_search"),
        "personsearch.evaluation.results_file": ("ResultsFile", "load_results", "save_results"),
        "personsearch.evaluation.search_protocols": ("evaluate_results_file",),
        "personsearch.data.registry": ("load_scene_dataset", "load_search_protocol"),
        "personsearch.models.reid": ("ReidConfig", "ReidModel", "build_reid_model"),
        "personsearch.serve.app": ("create_app",),
    }
)
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
