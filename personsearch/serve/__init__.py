"""The web page and JSON API over a gallery index (docs/serve.md).

    from personsearch.serve import create_app

Each name is imported on first use (they need the `serve` extra: FastAPI).
"""

from personsearch._exports import export_table, lazy_exports

_EXPORTS = export_table(
    {
        "personsearch.serve.app": ("create_app",),
        "personsearch.serve.limits": ("ServeLimits",),
    }
)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
