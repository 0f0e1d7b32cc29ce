"""The pictures that come with a synthetic world: a contact sheet of sample scenes with their
boxes, and the histogram of person heights (`personsearch.data.synthetic.generate_world` writes
both next to the world's stats.json)."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]


def identity_colour(pid: int) -> RGB:
    """A saturated colour per identity (golden-ratio hues), grey for background people."""
    if pid < 0:
        return (150, 150, 150)
    r, g, b = colorsys.hsv_to_rgb((pid * 0.618034) % 1.0, 0.9, 1.0)
    return (int(r * 255), int(g * 255), int(b * 255))


def write_contact_sheet(
    path: Path,
    image_dir: Path,
    results: list,
    is_test: list[bool],
    columns: int = 4,
    rows: int = 3,
    tile_width: int = 360,
) -> None:
    """A grid of sample scenes with their boxes: identities in colour, background people grey."""
    count = min(len(results), columns * rows)
    picks = np.linspace(0, len(results) - 1, count).round().astype(int)
    tile_height = int(tile_width * 0.8) + 16
    sheet = Image.new("RGB", (columns * tile_width, rows * tile_height), (255, 255, 255))
    font = ImageFont.load_default()
    for slot, k in enumerate(picks):
        result = results[k]
        with Image.open(image_dir / result.name) as scene:
            scale = min(tile_width / scene.width, (tile_height - 16) / scene.height)
            thumb = scene.convert("RGB").resize(
                (int(scene.width * scale), int(scene.height * scale)), Image.Resampling.LANCZOS
            )
        draw = ImageDraw.Draw(thumb)
        order = sorted(range(len(result.pids)), key=lambda i: result.pids[i] >= 0)
        for i in order:  # background boxes first so identity boxes stay on top
            x, y, w, h = (v * scale for v in result.boxes[i])
            pid = result.pids[i]
            draw.rectangle(
                [x, y, x + w, y + h], outline=identity_colour(pid), width=2 if pid >= 0 else 1
            )
            if pid >= 0:
                draw.text((x + 2, y + 1), f"p{pid}", fill=identity_colour(pid), font=font)
        ox, oy = (slot % columns) * tile_width, (slot // columns) * tile_height
        sheet.paste(thumb, (ox, oy + 16))
        label = f"{result.name} ({'test' if is_test[k] else 'train'}, {len(result.boxes)} people)"
        ImageDraw.Draw(sheet).text((ox + 4, oy + 2), label, fill=(0, 0, 0), font=font)
    sheet.save(path, format="PNG")


def write_scale_histogram(path: Path, results: list, stats: dict) -> None:
    """Histogram of person box heights (log scale), labelled and background people stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = [b[3] for r in results for b, p in zip(r.boxes, r.pids, strict=True) if p >= 0]
    background = [b[3] for r in results for b, p in zip(r.boxes, r.pids, strict=True) if p < 0]
    edges = stats["box_height"]["histogram"]["edges"]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.hist(
        [labelled, background],
        bins=edges,
        stacked=True,
        color=["tab:blue", "0.6"],
        label=[f"labelled ({len(labelled)})", f"background ({len(background)})"],
    )
    axes.set_xscale("log")
    ticks = [t for t in (30, 50, 100, 200, 400, 800) if edges[0] <= t <= edges[-1]]
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("person box height (pixels)")
    axes.set_ylabel("boxes")
    axes.set_title(
        f"synthetic world '{stats['preset']}': {stats['scenes']['total']} scenes, "
        f"heights {stats['box_height']['min']}-{stats['box_height']['max']} px"
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
