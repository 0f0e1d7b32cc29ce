"""The mAP / top-1 against gallery size plot (the shape of the CLSA paper's Figure 5):
`plot_gallery_curve` from numbers, `plot_gallery_sizes` from `evaluate`'s rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from personsearch.evaluation.search_protocols import GalleryEvaluation
from personsearch.io import atomic_path

#: CLSA (ECCV 2018, ResNet-50) mAP on CUHK-SYSU per gallery size, as published (%).
CLSA_PUBLISHED_MAP = {50: 88.4, 100: 87.3, 500: 85.4, 1000: 84.6, 2000: 83.4, 4000: 77.5}


def plot_gallery_curve(
    sizes: Sequence[int],
    mean_ap: Sequence[float],
    top1: Sequence[float],
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    title: str = "CUHK-SYSU search against gallery size",
    show_published: bool = True,
) -> Path:
    """Plot mAP and top-1 (fractions 0..1) against gallery size (log axis); write PNG/PDF/SVG.

    `sizes` are image counts (the full gallery as its image count), `labels` their tick labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (len(sizes) == len(mean_ap) == len(top1)) or not sizes:
        raise ValueError("need one mAP and one top-1 per gallery size")
    labels = list(labels) if labels is not None else [str(s) for s in sizes]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(sizes, [100 * v for v in mean_ap], "o-", color="tab:blue", label="mAP")
    ax.plot(sizes, [100 * v for v in top1], "s-", color="tab:orange", label="top-1")
    if show_published:
        ref = sorted(CLSA_PUBLISHED_MAP.items())
        ax.plot(
            [s for s, _ in ref],
            [v for _, v in ref],
            "o--",
            color="tab:gray",
            alpha=0.7,
            label="CLSA mAP (published)",
        )
    ax.set_xscale("log")
    ax.set_xticks(list(sizes))
    ax.set_xticklabels(labels)
    ax.minorticks_off()
    ax.set_xlabel("gallery size (images)")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
    return target


def plot_gallery_sizes(path: str | os.PathLike[str], rows: Sequence[GalleryEvaluation]) -> Path:
    """The plot of mAP and top-1 against gallery size ("full" placed at the pool's size)."""
    sizes = [len(r.protocol.images) if r.size == "full" else int(r.size) for r in rows]  # type: ignore[arg-type]
    labels = [
        f"full\n({len(r.protocol.images)})" if r.size == "full" else str(r.size) for r in rows
    ]
    return plot_gallery_curve(
        sizes,
        [r.result.mAP for r in rows],
        [r.result.top(1) for r in rows],
        Path(path),
        labels=labels,
    )
