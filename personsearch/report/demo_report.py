"""The demo's report.html: metrics beside the paper's, curves, and example queries with top-5."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.boxes import box_iou, search_iou_threshold
from personsearch.data.scenes import SceneDataset, SearchProtocol
from personsearch.evaluation.results_file import load_results
from personsearch.report.html import Report, figure, jpeg_data_uri, png_data_uri, table

#: the demo trains for minutes, the paper for 100 epochs: say so, and where the real test is
SCHEDULE_NOTE = (
    "The re-id net is trained on {schedule}, a few percent of the paper's 100 epochs (lr 0.01 / 10 "
    "at epochs 40 and 80), so its CLSA teacher has not converged: this demo shows the system "
    "working, not whether CLSA beats its baselines. That comparison, on the paper's schedule, is "
    'in docs/models.md, section "CLSA on the paper\'s schedule".'
)
#: CLSA on CUHK-SYSU as published (ECCV 2018, ResNet-50), in %: mAP and top-1 per gallery size.
PAPER_CLSA = {
    "50": (88.4, None),
    "100": (87.2, 88.5),
    "500": (85.4, None),
    "1000": (84.6, None),
    "2000": (83.4, None),
    "4000": (77.5, None),
}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _gallery_plot(search: dict[str, dict[str, float]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(search.items(), key=lambda kv: kv[1]["images"])
    sizes = [v["images"] for _, v in items]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    ax.plot(sizes, [100 * v["mAP"] for _, v in items], "o-", label="mAP (this demo)")
    ax.plot(sizes, [100 * v["top1"] for _, v in items], "s-", label="top-1 (this demo)")
    paper = [(int(k), v[0]) for k, v in PAPER_CLSA.items()]
    ax.plot(
        [s for s, _ in paper],
        [m for _, m in paper],
        "o--",
        color="gray",
        alpha=0.7,
        label="CLSA mAP, CUHK-SYSU (paper)",
    )
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([k if k != "full" else f"full\n({v['images']})" for k, v in items])
    ax.minorticks_off()
    ax.set_xlabel("gallery size (images)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _pr_plot(recall: list[float], precision: list[float]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=110)
    ax.plot(recall, precision, color="tab:green")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("detector, IoU 0.5 (scores >= 0.5)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _scale_plot(scales: dict[str, dict[str, dict[str, Any]]]) -> Any:
    """Grouped bars: mAP and top-1 per scale-gap bin, for each gallery size in `scales` (its
    `by_scale` metrics). A bin without any query gets no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(scales)
    bins = list(scales[sizes[0]])
    series = [(size, metric) for size in sizes for metric in ("mAP", "top1")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=110)
    x = np.arange(len(bins))
    for i, (size, metric) in enumerate(series):
        values = [100 * v[metric] if v["queries"] else np.nan for v in scales[size].values()]
        offset = (i - (len(series) - 1) / 2) * width
        # a size's two bars share a shade: the first size solid, the next ones lighter
        alpha = 1.0 if size == sizes[0] else 0.45
        ax.bar(
            x + offset,
            values,
            width,
            alpha=alpha,
            color="tab:blue" if metric == "mAP" else "tab:orange",
            label=f"{'mAP' if metric == 'mAP' else 'top-1'}, gallery {size}",
        )
    for j, key in enumerate(bins):
        if not any(scales[size][key]["queries"] for size in sizes):
            ax.text(j, 2, "no query", ha="center", fontsize=8, color="gray")
    counts = [" / ".join(str(scales[size][key]["queries"]) for size in sizes) for key in bins]
    first = scales[sizes[0]]
    ax.set_xticks(x)
    ax.set_xlim(-0.5, len(bins) - 0.5)  # an empty last bin still gets its place
    ax.set_xticklabels(
        [
            f"{first[k]['label']}\n{first[k]['range']}\nn = {n}"
            for k, n in zip(bins, counts, strict=True)
        ],
        fontsize=7,
    )
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=7, ncol=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False
    )
    fig.tight_layout()
    return fig


def _example_rankings(results_path: Path, protocol: SearchProtocol, count: int, top_k: int = 5):
    """For `count` evenly spaced queries: the top-k detections of its listed gallery, hit or miss."""
    results = load_results(results_path)
    name_to_row = {name: i for i, name in enumerate(results.image_names)}
    picks = np.linspace(0, len(protocol.queries) - 1, num=min(count, len(protocol.queries))).astype(
        int
    )
    keep = results.det_scores >= 0.5
    examples = []
    for q in picks:
        query = protocol.queries[q]
        rows = [name_to_row[protocol.images[i]] for i in query.gallery]
        gt_of_row = {row: query.gt_boxes[j] for j, row in enumerate(rows)}
        candidates = np.flatnonzero(np.isin(results.det_image, rows) & keep)
        sims = results.det_feats[candidates] @ results.query_feats[q]
        order = candidates[np.argsort(-sims, kind="stable")[:top_k]]
        ranked = []
        for det in order:
            row = int(results.det_image[det])
            gt = gt_of_row[row]
            box = results.det_boxes[det]
            hit = False
            if not np.isnan(gt[0]):
                iou = box_iou(box[None], gt[None])[0, 0]
                hit = bool(iou >= search_iou_threshold(gt[None])[0])
            ranked.append(
                (
                    results.image_names[row],
                    box,
                    float(results.det_feats[det] @ results.query_feats[q]),
                    hit,
                )
            )
        examples.append((query, ranked))
    return examples


def _scene_thumb(path: Path, box: np.ndarray, colour: str, height: int = 170) -> Any:
    from PIL import Image, ImageDraw

    with Image.open(path) as image:
        image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([float(v) for v in box], outline=colour, width=max(2, image.height // 120))
    scale = height / image.height
    return image.resize((max(1, round(image.width * scale)), height))


def _probe_thumb(path: Path, box: np.ndarray, height: int = 170) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        crop = image.convert("RGB").crop(tuple(int(round(v)) for v in box))
    scale = height / max(crop.height, 1)
    return crop.resize((max(1, round(crop.width * scale)), height), Image.NEAREST)


def write_demo_report(
    path: str | os.PathLike[str],
    *,
    metrics: dict[str, Any],
    timings: dict[str, float],
    plan_name: str,
    world: Path,
    reid_schedule: str = "",
    dataset: SceneDataset,
    protocol: SearchProtocol,
    results_path: Path,
    examples: int = 6,
) -> Path:
    """Write report.html (self-contained) and return its path."""
    report = Report(
        "personsearch demo: CLSA person search on the synthetic world",
        subtitle=(
            f"Plan '{plan_name}', world {world.name}: {len(dataset.train)} training and "
            f"{len(dataset.test)} test scenes. The paper's figures are on CUHK-SYSU, a different "
            "benchmark: they are shown for scale, not as a like-for-like comparison. "
            f"{SCHEDULE_NOTE.format(schedule=reid_schedule or 'a short schedule')}"
        ),
    )
    search = metrics["search"]
    rows = []
    for size, values in sorted(search.items(), key=lambda kv: kv[1]["images"]):
        paper = PAPER_CLSA.get(size, (None, None))
        rows.append(
            [
                f"{size}" + (f" ({values['images']} images)" if size == "full" else ""),
                _pct(values["mAP"]),
                _pct(values["top1"]),
                _pct(values["top5"]),
                _pct(values["top10"]),
                "–" if paper[0] is None else f"{paper[0]:.1f}",
                "–" if paper[1] is None else f"{paper[1]:.1f}",
            ]
        )
    report.add(
        "Person search (detections scored >= 0.5)",
        table(
            [
                "gallery size",
                "mAP %",
                "top-1 %",
                "top-5 %",
                "top-10 %",
                "paper mAP % (CUHK-SYSU)",
                "paper top-1 % (CUHK-SYSU)",
            ],
            rows,
        )
        + "<p class='note'>Each query's gallery lists the scenes that hold the person plus "
        "distractor scenes; 'full' searches every test scene. Protocol and evaluator are the "
        "ones used for the real CUHK-SYSU (docs/evaluation.md).</p>"
        + figure(png_data_uri(_gallery_plot(search)), "mAP and top-1 against gallery size"),
    )
    scales = {
        size: values["by_scale"]
        for size, values in sorted(search.items(), key=lambda kv: kv[1]["images"])
        if "by_scale" in values
    }
    if scales:
        report.add(
            "Search across scales (gallery / query person height)",
            figure(
                png_data_uri(_scale_plot(scales)),
                "r = gallery person height / query person height; in each bin a query is scored "
                "against only its true matches at that scale (its other ones removed from its "
                "gallery), and queries without one are not counted (n = queries, gallery "
                + " / ".join(scales)
                + ").",
            ),
        )
    det = metrics["detection"]
    report.add(
        "Detection (IoU 0.5)",
        table(
            ["persons", "recall %", "AP %"],
            [
                ["all (labelled and background)", _pct(det["recall"]), _pct(det["ap"])],
                ["labelled only", _pct(det["labeled_recall"]), _pct(det["labeled_ap"])],
            ],
        )
        + f"<p class='note'>{det['detections_per_image']:.1f} detections per test image kept "
        "(score >= 0.5), as indexed.</p>"
        + figure(png_data_uri(_pr_plot(det["pr_recall"], det["pr_precision"])), "precision-recall"),
    )

    by_name = {scene.name: scene for scene in dataset.test}
    blocks = []
    for query, ranked in _example_rankings(results_path, protocol, examples):
        cells = [
            figure(
                jpeg_data_uri(_probe_thumb(by_name[query.image].path, query.box)),
                f"probe (id {query.pid})",
            )
        ]
        for rank, (name, box, sim, hit) in enumerate(ranked, start=1):
            thumb = _scene_thumb(by_name[name].path, box, "#22aa22" if hit else "#cc2222")
            cells.append(
                figure(
                    jpeg_data_uri(thumb),
                    f"#{rank} {'hit' if hit else 'miss'} · {sim:.2f}",
                    css_class="hit" if hit else "miss",
                )
            )
        blocks.append(f"<div class='row'>{''.join(cells)}</div>")
    report.add(
        "Example queries: top-5 scenes (gallery 100)",
        "<p class='note'>Green: the box is the probe person (IoU above the protocol's threshold); "
        "red: another person. The number is the cosine similarity.</p>" + "".join(blocks),
    )
    report.add(
        "Time on this machine",
        table(["step", "seconds"], [[html.escape(k), f"{v:.0f}"] for k, v in timings.items()]),
    )
    return report.write(path)
