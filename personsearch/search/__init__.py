"""Search scene images for a person: pipelines (a detector and an embedder), the gallery index,
and the searcher that indexes and queries it (docs/search.md).

    from personsearch.search import PersonSearcher, load_pipeline

Each name is imported on first use: the torch and ONNX wrappers load torch or ONNX Runtime only
when asked for.
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.search.pipeline": (
            "Pipeline",
            "load_pipeline",
            "baseline_pipeline",
            "open_searcher",
            "write_pipeline_spec",
            "read_pipeline_spec",
        ),
        "personsearch.search.searcher": (
            "PersonSearcher",
            "IndexReport",
            "list_images",
            "list_gallery_files",
        ),
        "personsearch.search.video_indexing": ("VideoSampling", "index_video"),
        "personsearch.search.video_scan": ("scan_video", "ScannedFrame"),
        "personsearch.search.tracking": ("Tracker", "TrackerSettings", "one_hit_per_track"),
        "personsearch.search.index": ("GalleryIndex", "SearchHit"),
        "personsearch.search.detectors": (
            "Detector",
            "WholeImageDetector",
            "GroundTruthBoxes",
            "HogPeopleDetector",
            "hog_available",
        ),
        "personsearch.search.embedders": (
            "Embedder",
            "ColorHistogramEmbedder",
            "BandColourEmbedder",
        ),
        "personsearch.search.onnx_detector": (
            "OnnxDetector",
            "OnnxDetectorConfig",
            "load_onnx_detector",
        ),
        "personsearch.search.onnx_embedder": (
            "OnnxEmbedder",
            "OnnxEmbedderConfig",
            "load_onnx_embedder",
        ),
        "personsearch.search.torch_detector": ("TorchDetector",),
        "personsearch.search.torch_embedders": ("TorchReidEmbedder", "ImageNetEmbedder"),
        "personsearch.search.coco_detectors": ("CocoDetector",),
        "personsearch.search.ray_indexing": ("RunPipeline", "RayIndexReport", "index_with_ray"),
        "personsearch.search.pipeline_results": ("pipeline_results_file", "write_search_results"),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
