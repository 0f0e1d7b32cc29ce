"""Indexing a gallery across many machines: a Ray Data batch-inference job, merged with FAISS.

One machine indexes a folder with `PersonSearcher.index_folder`. Past one machine, the same work
runs as a Ray Data job (needs the optional extra: `pip install 'personsearch[ray]'`):

1. The driver lists the files the index does not hold yet and cuts them into shards: runs of
   `shard_images` consecutive images (consecutive in the single-machine order), then one shard
   per video (a video is one scan: its frames are tracked in order, so it is not split). Videos
   are where many workers pay off for footage: N cameras' videos are scanned N at a time.
2. `ray.data.from_items(shards).map_batches(_ShardIndexer, compute=ActorPoolStrategy(size=N))`:
   each of N worker actors builds the pipeline once (the detector and embedder `personsearch
   index` would use) and indexes each shard it is given with the single-machine code itself
   (`PersonSearcher.index_paths`) into a small GalleryIndex folder of its own, written under a
   temporary name and renamed when complete. For a flat index the worker also writes the
   shard's FAISS index.
3. The driver merges shards as they arrive, in shard order: each shard's records and features
   go into the output index with `GalleryStore.add_batch`, and a video shard's video, whole, as
   one `VideoChunk` (its boxes with their frames, times and tracks, and its progress) with
   `add_video_chunk` (one transaction per shard, so a killed merge resumes), and the shards' FAISS indexes are merged with FAISS's own
   `merge_from`. For IVF, FAISS's distributed recipe: the driver trains the coarse quantizer
   once (on the very sample a single machine would use), the workers add their shard's vectors
   to copies of that trained empty index, and the driver merges those with `merge_from`.
   HNSW graphs cannot be merged: the driver builds that one.

Because shards are consecutive runs of the single-machine order (images, then videos) and are
merged in that order, the merged index is row for row the index `personsearch index` builds on
one machine: same images, videos, boxes, scores, frames, times, track ids, features, FAISS ids,
and search results. A video an earlier single-machine run left part-way is finished by the
driver after the merge, resuming where that run stopped (a Ray worker's own shard is not
resumable: a video whose worker died is scanned again from its start by the retried task).

Every worker reads the gallery and writes shards under the output folder, so on a cluster the
gallery, the output folder and any `--run` folder must be on storage all nodes see (e.g. NFS).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.data.video import is_video
from personsearch.errors import PersonSearchError
from personsearch.io import atomic_path
from personsearch.search.detectors import detector_fingerprint
from personsearch.search.faiss_backends import (
    build_faiss_index,
    empty_faiss_index,
    ivf_training_rows,
)
from personsearch.search.index import GalleryIndex, GalleryIndexError
from personsearch.search.pipeline import Pipeline, baseline_pipeline, load_pipeline
from personsearch.search.searcher import (
    IMAGE_SUFFIXES,
    IndexReport,
    PersonSearcher,
    check_same_detector,
    images_to_index,
    list_gallery_files,
)
from personsearch.search.store.gallery import GalleryStore
from personsearch.search.video_indexing import VideoSampling

RAY_INSTALL_HINT = "pip install 'personsearch[ray]'   (or: pip install 'ray[data]==2.60.0')"
SHARDS_DIR = "ray-shards"  #: inside the output index folder; removed when the job ends
FLAT_PART = "part-flat.faiss"
IVF_PART = "part-ivf.faiss"

PipelineFactory = Callable[[], Pipeline]


def import_ray() -> Any:
    """The `ray` module, or a PersonSearchError saying how to install the optional extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate part of the extra
    except ImportError as error:
        raise PersonSearchError(
            f"indexing with Ray needs Ray Data, which is not installed ({error}): {RAY_INSTALL_HINT}"
        ) from None
    return ray


@dataclass(frozen=True)
class RunPipeline:
    """The pipeline `personsearch index --run RUN` uses (the baseline without a run), as a
    picklable recipe: each Ray worker builds its own copy from it."""

    run_dir: str | None = None

    def __call__(self) -> Pipeline:
        return load_pipeline(self.run_dir) if self.run_dir else baseline_pipeline()


@dataclass
class RayIndexReport(IndexReport):
    """What one Ray indexing job did: `IndexReport` plus how it was spread and merged."""

    shards: int = 0  #: shards indexed by the workers
    workers: set[str] = field(default_factory=set)  #: "host:pid" of every worker that made one
    faiss: str = ""  #: how the FAISS index was made: merged from shards, or built by the driver
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{super().summary()}; {self.shards} shards from {len(self.workers)} Ray workers, "
            f"FAISS index {self.faiss}, {self.seconds:.1f} s"
        )


def index_with_ray(
    gallery: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    pipeline: PipelineFactory | None = None,
    num_workers: int = 2,
    address: str | None = None,
    index_kind: str | None = None,
    shard_images: int = 64,
    batch_images: int = 8,
    info: Mapping[str, str] | None = None,
    progress: bool = True,
    sampling: VideoSampling | None = None,
) -> RayIndexReport:
    """Index the images and videos under `gallery` into the gallery index `out` with
    `num_workers` Ray workers (videos sampled by `sampling`, as `index_folder` does).

    `pipeline` builds the detector + embedder (default: the baseline, as `personsearch index`
    without --run); it must be picklable, since each worker calls it. Ray is joined at `address`
    (a running cluster), or is the instance already initialised in this process, or else a local
    instance started for this call and shut down after it. Incremental like the single-machine
    path: images already in `out` are skipped.
    """
    started = time.perf_counter()
    gallery = Path(gallery).resolve()
    out = Path(out).resolve()
    if not gallery.is_dir():
        raise PersonSearchError(f"gallery folder not found: {gallery}")
    if int(num_workers) < 1 or int(shard_images) < 1:
        raise PersonSearchError(
            f"need at least 1 worker and 1 image per shard, got {num_workers} and {shard_images}"
        )
    paths = list_gallery_files(gallery)
    if not paths:
        raise PersonSearchError(
            f"no images or videos under {gallery} (looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} and the video suffixes)"
        )
    ray = import_ray()
    factory = pipeline or RunPipeline()
    here = factory()  # the driver's copy: what the index records, and early errors in the spec
    meta = {"pipeline": here.source, **(info or {})}
    meta.setdefault("detector", detector_fingerprint(here.detector))
    with contextlib.ExitStack() as cleanup:  # undone in reverse: shards, index, Ray
        if _connect(ray, address, int(num_workers)):  # before anything is written
            cleanup.callback(ray.shutdown)
        index = cleanup.enter_context(
            GalleryIndex.open_for_writing(
                out,
                fingerprint=here.embedder.fingerprint,
                dim=here.embedder.dim,
                index_kind=index_kind,
                info=meta,
            )
        )
        check_same_detector(index, here.detector)
        report = RayIndexReport(folder=gallery, found=len(paths))
        report.videos = sum(is_video(p) for p in paths)
        todo = images_to_index(index, paths, report)
        started_videos = index.store.video_progress()  # part-way: the driver resumes them
        images = [p for p in todo if not is_video(p)]
        videos = [p for p in todo if is_video(p) and str(p.resolve()) not in started_videos]
        unfinished = [p for p in todo if is_video(p) and str(p.resolve()) in started_videos]
        shard_root = out / SHARDS_DIR
        shutil.rmtree(shard_root, ignore_errors=True)  # left by a killed job: we hold the lock
        shard_root.mkdir()
        cleanup.callback(shutil.rmtree, shard_root, ignore_errors=True)
        fresh = index.store.num_boxes == 0
        shards = [images[i : i + shard_images] for i in range(0, len(images), shard_images)]
        shards += [[video] for video in videos]
        with _data_context(ray):
            merged = _index_shards(
                ray,
                index,
                shards,
                factory,
                shard_root,
                report,
                num_workers=int(num_workers),
                batch_images=batch_images,
                progress=progress,
                sampling=sampling,
            )
            report.shards = len(shards)
            if unfinished:
                _finish_on_driver(index, here, unfinished, sampling, report, progress)
            _finish_faiss(ray, index, merged, fresh, int(num_workers), report)
        report.seconds = time.perf_counter() - started
        return report


# ---- the driver ----------------------------------------------------------------------------


@dataclass
class _MergedShard:
    folder: Path
    first_row: int
    n_rows: int


def _index_shards(
    ray: Any,
    index: GalleryIndex,
    shards: list[list[Path]],
    factory: PipelineFactory,
    shard_root: Path,
    report: RayIndexReport,
    *,
    num_workers: int,
    batch_images: int,
    progress: bool,
    sampling: VideoSampling | None,
) -> list[_MergedShard]:
    """Run the workers; merge each shard into `index` as soon as all shards before it are in."""
    if not shards:
        return []
    from tqdm import tqdm

    items = [{"shard": k, "paths": [str(p) for p in chunk]} for k, chunk in enumerate(shards)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _ShardIndexer,
        fn_constructor_kwargs={
            "pipeline": factory,
            "shard_root": str(shard_root),
            "batch_images": batch_images,
            "flat": index.store.index_kind == "flat",
            "sampling": sampling,
        },
        batch_size=1,
        batch_format="numpy",
        # one shard at a time per worker: a free worker takes the next shard (load balancing)
        compute=ray.data.ActorPoolStrategy(size=num_workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1,
    )
    arrived: dict[int, Path] = {}
    merged: list[_MergedShard] = []
    desc = f"indexing ({num_workers} Ray workers)"
    total = sum(len(chunk) for chunk in shards)
    with tqdm(total=total, desc=desc, unit="file", disable=not progress) as bar:
        for row in _ray_errors(ray, dataset.iter_rows()):
            arrived[int(row["shard"])] = Path(str(row["folder"]))
            report.workers.add(str(row["worker"]))
            while len(merged) in arrived:  # merge in shard order: rows as on one machine
                folder = arrived.pop(len(merged))
                first_row = index.store.num_boxes
                files = _merge_shard(index.store, folder, report)
                merged.append(_MergedShard(folder, first_row, index.store.num_boxes - first_row))
                bar.update(files)
    if len(merged) != len(shards):
        raise PersonSearchError(
            f"the Ray job returned {len(merged)} of {len(shards)} shards; run it again to resume"
        )
    return merged


def _merge_shard(store: GalleryStore, folder: Path, report: RayIndexReport) -> int:
    """Add one shard's records and features to the index's store (one transaction); count them."""
    # A worker node whose model or detector differs from the driver's (other weights, another
    # OpenCV) must not slip into the index: the shard's fingerprints are checked like an index's.
    with GalleryStore.open(folder, fingerprint=store.fingerprint) as shard:
        theirs, ours = shard.meta.get("detector"), store.meta.get("detector")
        if theirs != ours:
            raise GalleryIndexError(
                f"a Ray worker detected with {theirs!r}, the driver with {ours!r}: every node "
                "must have the same detector (same weights and OpenCV version)"
            )
        records, vectors = shard.records(), shard.vectors()
        image_rows, videos = shard.image_rows(), shard.video_chunks()
    store.add_batch(records, vectors[image_rows])
    report.count(records)
    for chunk, rows in videos:
        store.add_video_chunk(chunk, vectors[rows])
        report.added += 1
        report.boxes += len(rows)
        report.frames += chunk.frames_sampled
        if chunk.error is not None:
            report.stopped.append((chunk.video.path, chunk.error))
    return len(records) + len(videos)


def _finish_on_driver(
    index: GalleryIndex,
    pipeline: Pipeline,
    videos: list[Path],
    sampling: VideoSampling | None,
    report: RayIndexReport,
    progress: bool,
) -> None:
    """Index videos an earlier run left part-way with the driver's pipeline, resuming them."""
    searcher = PersonSearcher(pipeline.detector, pipeline.embedder, index)
    done = searcher.index_paths(videos, progress=progress, sampling=sampling)
    report.added += done.added
    report.boxes += done.boxes
    report.frames += done.frames
    report.failed += done.failed
    report.resumed += done.resumed
    report.stopped += done.stopped


def _finish_faiss(
    ray: Any,
    index: GalleryIndex,
    shards: list[_MergedShard],
    fresh: bool,
    num_workers: int,
    report: RayIndexReport,
) -> None:
    """Give the index its FAISS index: merged from the shards' when it was empty before."""
    import faiss

    kind = index.store.index_kind
    if not fresh or kind in ("hnsw", "ivfpq") or index.store.num_boxes == 0:
        # Rows appended to an existing index extend its cached FAISS index the usual way; an
        # HNSW graph cannot be merged from parts, and "ivfpq" re-ranks with the exact vectors
        # the driver holds anyway, so the driver builds both.
        index.prepare()
        report.faiss = f"{kind}, built by the driver"
        return
    if kind == "flat":
        merged = faiss.IndexFlatIP(index.store.dim)
        for shard in shards:
            merged.merge_from(faiss.read_index(str(shard.folder / FLAT_PART)))
    else:
        merged = _merge_ivf(ray, index, shards, num_workers)
    index.adopt_faiss_index(merged)
    report.faiss = f"{kind}, merged from {len(shards)} shards with FAISS merge_from"


def _merge_ivf(ray: Any, index: GalleryIndex, shards: list[_MergedShard], num_workers: int) -> Any:
    """FAISS's distributed IVF build: train once here, fill per shard on workers, merge here."""
    import faiss

    store = index.store
    n = store.num_boxes
    trained = empty_faiss_index("ivf", store.dim, n)
    rows = ivf_training_rows(n, trained.nlist)  # the sample a single machine trains on
    trained.train(_rows_of(shards, rows, store.fingerprint))
    items = [{"folder": str(s.folder), "first_row": s.first_row} for s in shards if s.n_rows]
    parts = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _fill_ivf_part,
        fn_kwargs={"trained": faiss.serialize_index(trained), "fingerprint": store.fingerprint},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=num_workers),
        num_cpus=1,
    )
    written = {str(row["folder"]) for row in _ray_errors(ray, parts.iter_rows())}
    for shard in shards:  # ids are global rows already: merge with no offset, in row order
        if shard.n_rows:
            if str(shard.folder) not in written:
                raise PersonSearchError(f"the Ray job did not fill the IVF part of {shard.folder}")
            trained.merge_from(faiss.read_index(str(shard.folder / IVF_PART)), 0)
    return trained


def _rows_of(shards: list[_MergedShard], rows: np.ndarray | None, fingerprint: str) -> np.ndarray:
    """The features at global `rows` (None: all), read shard by shard."""
    parts = []
    for shard in shards:
        if not shard.n_rows:
            continue
        with GalleryStore.open(shard.folder, fingerprint=fingerprint) as part:
            vectors = part.vectors()
        if rows is None:
            parts.append(vectors)
        else:
            mine = rows[(rows >= shard.first_row) & (rows < shard.first_row + shard.n_rows)]
            parts.append(vectors[mine - shard.first_row])
    return np.ascontiguousarray(np.concatenate(parts))


def _connect(ray: Any, address: str | None, num_workers: int) -> bool:
    """Join `address`, reuse this process's Ray, or start a local one; True if started here."""
    started = False
    if not ray.is_initialized():
        if address:
            _probe(address)
        try:
            if address:
                ray.init(address=address)
            else:
                cpus = max(num_workers, os.cpu_count() or 1)
                ray.init(address="local", num_cpus=cpus, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise PersonSearchError(
                f"cannot start or reach {where}: {error} (start a cluster with `ray start --head`"
                " and pass its address, e.g. --ray-address HEAD_IP:6379)"
            ) from None
        started = True
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < num_workers:
        if started:
            ray.shutdown()
        raise PersonSearchError(
            f"the Ray cluster has {cpus} CPUs, fewer than the {num_workers} workers asked for "
            "(each worker takes one CPU): ask for fewer workers or add nodes"
        )
    return started


@contextlib.contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for our jobs, restored after: a worker's own exception reaches the
    driver (not Ray's wrapper), and our progress bar replaces Ray's."""
    context = ray.data.DataContext.get_current()
    saved = context.raise_original_map_exception, context.enable_progress_bars
    context.raise_original_map_exception, context.enable_progress_bars = True, False
    try:
        yield
    finally:
        context.raise_original_map_exception, context.enable_progress_bars = saved


def _probe(address: str) -> None:
    """Fail fast when nothing listens at a HOST:PORT address (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray://...: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise PersonSearchError(
            f"no Ray cluster answers at {address} ({error}): start one with `ray start --head` "
            "on the head node and pass the address it prints"
        ) from None


def _ray_errors(ray: Any, rows: Iterable[Any]) -> Iterator[Any]:
    """Iterate a Ray Data result, turning a worker's failure into one PersonSearchError."""
    try:
        yield from rows
    except ray.exceptions.RayError as error:
        original = getattr(error, "cause", None) or error  # the worker's own exception
        lines = str(original).strip().splitlines()
        detail = lines[0] if lines else ""
        if not isinstance(original, PersonSearchError):
            detail = f"{type(original).__name__}: {detail}"
        raise PersonSearchError(f"a Ray worker failed: {detail}") from error


# ---- the workers ---------------------------------------------------------------------------


class _ShardIndexer:
    """One per Ray worker actor: builds the pipeline once, then indexes the shards it is given."""

    def __init__(
        self,
        pipeline: PipelineFactory,
        shard_root: str,
        batch_images: int,
        flat: bool,
        sampling: VideoSampling | None = None,
    ) -> None:
        built = pipeline()
        self.detector, self.embedder = built.detector, built.embedder
        self.shard_root = Path(shard_root)
        self.batch_images = batch_images
        self.flat = flat
        self.sampling = sampling
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        folders = [
            str(self._index_shard(int(k), [Path(str(p)) for p in paths]))
            for k, paths in zip(batch["shard"], batch["paths"], strict=True)
        ]
        return {
            "shard": [int(k) for k in batch["shard"]],
            "folder": folders,
            "worker": [self.worker] * len(folders),
        }

    def _index_shard(self, shard: int, paths: list[Path]) -> Path:
        final = self.shard_root / f"{shard:06d}"
        if final.is_dir():  # a retried task whose first attempt finished
            return final
        tmp = self.shard_root / f".tmp-{shard:06d}-{uuid.uuid4().hex}"
        try:
            with PersonSearcher.open(
                tmp, self.detector, self.embedder, batch_images=self.batch_images
            ) as searcher:
                # the single-machine code itself: same reading, boxes, crops and features
                searcher.index_paths(paths, progress=False, sampling=self.sampling)
                if self.flat:
                    part = build_faiss_index(searcher.index.store.vectors(), "flat")
                    _write_faiss(part, tmp / FLAT_PART)
            try:
                os.rename(tmp, final)  # the shard appears complete or not at all
            except OSError:
                if not final.is_dir():  # else a concurrent retry of this shard won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def _fill_ivf_part(
    batch: dict[str, np.ndarray], trained: np.ndarray, fingerprint: str
) -> dict[str, list[str]]:
    """A Ray task: add one shard's vectors, under their global row ids, to the trained index."""
    import faiss

    for folder, first_row in zip(batch["folder"], batch["first_row"], strict=True):
        folder = Path(str(folder))
        with GalleryStore.open(folder, fingerprint=fingerprint) as shard:
            vectors = shard.vectors()
        part = faiss.deserialize_index(trained)
        part.add_with_ids(vectors, np.arange(first_row, first_row + len(vectors), dtype=np.int64))
        _write_faiss(part, folder / IVF_PART)
    return {"folder": [str(f) for f in batch["folder"]]}


def _write_faiss(index: Any, path: Path) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def pipeline_of(detector: Any, embedder: Any, source: str = "custom") -> PipelineFactory:
    """A picklable factory for a given detector and embedder (they are copied to each worker)."""
    return functools.partial(Pipeline, detector, embedder, source)
