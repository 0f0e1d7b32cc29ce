"""Score a search system on a dataset's search protocols (`personsearch evaluate`, the demo).

`evaluate_results_file` does the whole of `evaluate`'s work on a results file: the gallery sizes
asked for, their protocols, mAP/top-k per size (each CUHK-SYSU size shares one grouping of the
detections), optionally CBGM and the scale-gap bins. `evaluate_protocols` is its core for a
results file already loaded and protocols already read (the demo's way). `write_per_query`
writes the per-query CSV. Running a pipeline to make a results file
(`personsearch.search.pipeline_results.pipeline_results_file`) and plotting mAP against gallery
size (`personsearch.report.gallery_curve.plot_gallery_sizes`) live above this package, which
imports nothing from search/ or report/.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personsearch.data.cuhk_sysu import available_gallery_sizes, cache_protocols
from personsearch.data.registry import load_search_protocol
from personsearch.data.scenes import SearchProtocol
from personsearch.errors import ConfigError, ResultsError
from personsearch.evaluation.cbgm import CBGM_DEFAULTS, CBGMOptions
from personsearch.evaluation.results_file import ResultsFile, load_results
from personsearch.evaluation.scale_gap import search_by_scale
from personsearch.evaluation.search import Duplicates, SearchScores, evaluate_search
from personsearch.io import atomic_open

#: A gallery size: 50 ... 4000 or "full" (CUHK-SYSU); None for PRW (one gallery).
GallerySize = int | str | None
ALL_SIZES = "all-sizes"
#: The size whose numbers head a summary when several sizes are evaluated.
MAIN_GALLERY_SIZE = 100


@dataclass(frozen=True)
class GalleryEvaluation:
    """One gallery size's protocol and scores (and scale-gap bins, when asked for)."""

    size: GallerySize
    protocol: SearchProtocol
    result: SearchScores
    by_scale: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class SearchEvaluation:
    """Everything `evaluate` computed on one results file."""

    dataset: str
    results: Path
    det_thresh: float
    duplicates: Duplicates
    cbgm: CBGMOptions | None
    rows: list[GalleryEvaluation]

    @property
    def main(self) -> GalleryEvaluation:
        """The gallery-100 row if there is one, else the first."""
        return next((r for r in self.rows if r.size == MAIN_GALLERY_SIZE), self.rows[0])

    def summary(self) -> dict[str, Any]:
        """The JSON summary: settings, the main row's numbers and, for several sizes, each's."""
        main = self.main
        summary: dict[str, Any] = {
            "dataset": self.dataset,
            "results": str(self.results),
            "det_thresh": self.det_thresh,
            "duplicates": self.duplicates,
            "cbgm": None if self.cbgm is None else {"k1": self.cbgm.k1, "k2": self.cbgm.k2},
            "protocol": main.protocol.name,
            "num_queries": len(main.protocol.queries),
            **main.result.summary(),
        }
        if main.by_scale is not None:
            summary["by_scale"] = main.by_scale
        if len(self.rows) > 1:
            summary["gallery_sizes"] = [_size_entry(row) for row in self.rows]
        return summary


def _size_entry(row: GalleryEvaluation) -> dict[str, Any]:
    entry = {"gallery_size": row.size, "protocol": row.protocol.name, **row.result.summary()}
    if row.by_scale is not None:
        entry["by_scale"] = row.by_scale
    return entry


def search_gallery_sizes(
    dataset: str, root: str | os.PathLike[str], gallery_size: int | str = MAIN_GALLERY_SIZE
) -> list[GallerySize]:
    """The gallery sizes to evaluate: [None] for PRW; for CUHK-SYSU the one asked for, or with
    "all-sizes" every size whose TestG file exists plus "full" ([100] if none exists)."""
    if dataset == "prw":
        return [None]
    if gallery_size == ALL_SIZES:
        return list(available_gallery_sizes(root)) or [MAIN_GALLERY_SIZE]
    return [gallery_size if gallery_size == "full" else int(gallery_size)]


def iter_protocols(
    dataset: str,
    root: str | os.PathLike[str],
    sizes: Sequence[GallerySize],
    cross_camera: bool = False,
) -> Iterator[tuple[GallerySize, SearchProtocol]]:
    """(size, protocol) for each size, each read when reached (several CUHK-SYSU files are
    first parsed in parallel into the protocol cache)."""
    if dataset == "cuhk-sysu" and len(sizes) > 1:
        cache_protocols(root, sizes)  # first parse of every .mat file, in parallel
    for size in sizes:
        gallery_size = MAIN_GALLERY_SIZE if size is None else size
        yield (
            size,
            load_search_protocol(
                dataset, root, gallery_size=gallery_size, cross_camera=cross_camera
            ),
        )


def check_queries(
    results: ResultsFile, protocol: SearchProtocol, source: str | os.PathLike[str]
) -> None:
    """ResultsError unless the results file holds one query feature per protocol query."""
    if len(results.query_feats) != len(protocol.queries):
        raise ResultsError(
            f"{source}: {len(results.query_feats)} query features, but {protocol.name} has "
            f"{len(protocol.queries)} queries (one feature per query, in protocol order)"
        )


def evaluate_protocols(
    results: ResultsFile,
    protocols: Iterable[tuple[GallerySize, SearchProtocol]],
    *,
    det_thresh: float = 0.5,
    duplicates: Duplicates = "original",
    cbgm: CBGMOptions | None = None,
    by_scale: bool | Collection[GallerySize] = False,
    source: str | os.PathLike[str] = "<results>",
) -> list[GalleryEvaluation]:
    """Score `results` on each (size, protocol), in order; `by_scale` (True: every size, or the
    sizes it lists) adds the scale-gap bins. Protocols over the same images share one grouping
    of the detections. `source` names the results in errors."""
    rows = []
    galleries: dict[tuple[str, ...], Any] = {}
    for size, protocol in protocols:
        check_queries(results, protocol, source)
        if protocol.images not in galleries:  # every CUHK-SYSU size shares the pool: group once
            galleries[protocol.images] = results.gallery_for(protocol.images, det_thresh)
        gallery = galleries[protocol.images]
        options = {"duplicates": duplicates, "cbgm": cbgm, "query_context": results.context}
        result = evaluate_search(protocol, gallery, results.query_feats, **options)
        scale = None
        if by_scale is True or (by_scale and size in by_scale):
            scale = search_by_scale(protocol, gallery, results.query_feats, **options)
        rows.append(GalleryEvaluation(size, protocol, result, scale))
    return rows


def cbgm_options(
    dataset: str,
    results: ResultsFile,
    source: str | os.PathLike[str],
    k1: int | None = None,
    k2: int | None = None,
) -> CBGMOptions:
    """CBGM's settings (the dataset's defaults where k1/k2 are None), refused when the results
    file lacks the query images' detections."""
    if results.context is None:
        raise ResultsError(
            f"{source}: --cbgm needs the query images' detections (ctx_query, "
            "ctx_scores, ctx_feats, optional ctx_boxes)"
        )
    default = CBGM_DEFAULTS[dataset]
    try:
        return CBGMOptions(k1 or default.k1, k2 or default.k2)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def evaluate_results_file(
    dataset: str,
    root: str | os.PathLike[str],
    results_path: str | os.PathLike[str],
    *,
    gallery_size: int | str = MAIN_GALLERY_SIZE,
    det_thresh: float = 0.5,
    cross_camera: bool = False,
    duplicates: Duplicates = "original",
    cbgm: bool = False,
    cbgm_k1: int | None = None,
    cbgm_k2: int | None = None,
    by_scale: bool = False,
) -> SearchEvaluation:
    """Score a results file on `dataset`'s protocols (`gallery_size`: 50 ... 4000, "full" or
    "all-sizes"; PRW has one gallery) with the published evaluation (docs/evaluation.md)."""
    results = load_results(results_path)
    options = cbgm_options(dataset, results, results_path, cbgm_k1, cbgm_k2) if cbgm else None
    sizes = search_gallery_sizes(dataset, root, gallery_size)
    protocols = iter_protocols(dataset, root, sizes, cross_camera)
    rows = evaluate_protocols(
        results,
        protocols,
        det_thresh=det_thresh,
        duplicates=duplicates,
        cbgm=options,
        by_scale=by_scale,
        source=results_path,
    )
    return SearchEvaluation(dataset, Path(results_path), det_thresh, duplicates, options, rows)


def write_per_query(path: str | os.PathLike[str], rows: Sequence[GalleryEvaluation]) -> None:
    """A CSV row per query of every gallery size: AP, counts and the top-k hits."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        ks = rows[0].result.ks
        handle.write(
            "protocol,query,image,pid,ap,count_gt,count_tp,"
            + ",".join(f"top{k}" for k in ks)
            + "\n"
        )
        for row in rows:
            protocol, result = row.protocol, row.result
            for i, task in enumerate(protocol.queries):
                hits = ",".join(str(int(h)) for h in result.hits[i])
                handle.write(
                    f"{protocol.name},{i},{task.image},{task.pid},{result.ap[i]:.10f},"
                    f"{result.count_gt[i]},{result.count_tp[i]},{hits}\n"
                )
