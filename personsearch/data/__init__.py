"""Datasets: scene records and protocols, the readers of CUHK-SYSU, PRW, Market-1501, CUHK03
and CIFAR-100 (one table of names: `DATASET_SPECS`), and the synthetic world (docs/datasets.md).

    from personsearch.data import load_scene_dataset, load_search_protocol

Each name is imported on first use.
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.data.registry": (
            "DATASET_SPECS",
            "DatasetSpec",
            "load_scene_dataset",
            "load_search_protocol",
            "load_crop_dataset",
            "load_classify_dataset",
        ),
        "personsearch.data.scenes": (
            "Scene",
            "SceneDataset",
            "SearchProtocol",
            "QueryTask",
            "Crop",
            "CropDataset",
        ),
        "personsearch.data.synthetic": ("generate_world",),
        "personsearch.data.validation": ("DatasetReport", "check_dataset"),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
