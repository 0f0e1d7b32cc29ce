"""Pictures and pages made from results: the demo report, search result sheets, the mAP against
gallery size plot (the synthetic world's previews are `personsearch.data.synthetic_previews`).

    from personsearch.report import write_results_picture

Each name is imported on first use.
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.report.demo_report": ("write_demo_report",),
        "personsearch.report.search_picture": ("write_results_picture",),
        "personsearch.report.gallery_curve": ("plot_gallery_curve", "plot_gallery_sizes"),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
