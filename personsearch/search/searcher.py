"""End-to-end person search over a folder of scene images, in a few lines:

    from personsearch.search.pipeline import baseline_pipeline   # or load_pipeline(run_dir)
    from personsearch.search.searcher import PersonSearcher

    pipeline = baseline_pipeline()
    searcher = PersonSearcher.open("gallery.index", pipeline.detector, pipeline.embedder)
    searcher.index_folder("frames/")                     # incremental: only new images
    for hit in searcher.search("probe.jpg", box=(40, 20, 110, 230), top_k=5):
        print(hit.similarity, hit.image_path, hit.box)

Indexing detects persons in every image, crops them, embeds the crops, and adds the batch to the
gallery index's store (see `personsearch.search.store.writer` for why that is crash-safe).
Images that cannot be read are recorded as failed and reported; the rest carry on. An image the
process died on (a crash in native code) is retried once, then recorded as failed too, so it
cannot stop every later run: the rules of the store's indexing journal
(`personsearch.search.store.journal`), applied here.

Videos in the gallery (`personsearch.data.video.VIDEO_SUFFIXES`) are sampled (2 frames per
second by default, `VideoSampling`), tracked, and committed in chunks of frames that a killed run
resumes after (`personsearch.search.video_indexing`).

Images are read with `read_scaled` (personsearch/data/images.py): one whose longer side is above
DETECT_MAX_SIDE is detected and cropped at a reduced scale, and its boxes are mapped back, so the
index always holds boxes, widths and heights in full-resolution pixels of the image as shown.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.boxes import clip_boxes, crop_bounds
from personsearch.data.images import ScaledImage, read_scaled
from personsearch.data.video import VIDEO_SUFFIXES, is_video
from personsearch.errors import ImageError, PersonSearchError
from personsearch.io import file_digest
from personsearch.search.detectors import Detector, detect_checked, detector_fingerprint
from personsearch.search.embedders import Embedder, embed_checked
from personsearch.search.index import GalleryIndex, GalleryIndexError, ImageRecord, SearchHit
from personsearch.search.store.journal import CRASH_LIMIT, crash_error, is_crash_error
from personsearch.search.tracking import TrackerSettings
from personsearch.search.video_indexing import VideoSampling, index_video, record_stopped

__all__ = [
    "IMAGE_SUFFIXES",
    "IndexReport",
    "PersonSearcher",
    "SearchHit",
    "VideoSampling",
    "validate_box",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Boxes may overshoot the image by this many pixels (rounding in annotations); they are clipped.
BOX_TOLERANCE = 1.0

_CAMERA_IN_NAME = re.compile(r"^c(\d+)s\d+_")  # PRW / Market-1501 names: c<camera>s<sequence>_


def camera_from_name(path: Path) -> int:
    """Camera id from PRW/Market-style file names ("c3s2_012345.jpg" -> 3), else -1."""
    match = _CAMERA_IN_NAME.match(path.name)
    return int(match.group(1)) if match else -1


@dataclass
class IndexReport:
    """What one `index_folder` call did."""

    folder: Path
    found: int = 0  #: image and video files found in the folder
    added: int = 0  #: images and videos newly indexed (a video: read to its end or its fault)
    boxes: int = 0  #: person boxes added
    skipped: int = 0  #: images already in the index, left as they were
    failed: list[tuple[str, str]] = field(default_factory=list)  #: (path, error) not indexed
    changed: list[str] = field(default_factory=list)  #: indexed earlier, file modified since
    videos: int = 0  #: of `found`, video files
    frames: int = 0  #: sampled video frames indexed
    resumed: list[str] = field(default_factory=list)  #: videos continued after a stopped run
    #: (path, error) of videos whose decoding stopped part-way: the frames before are indexed
    stopped: list[tuple[str, str]] = field(default_factory=list)

    def count(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """Count records just added to the index; returns those that failed."""
        failed = [record for record in records if record.error is not None]
        for record in records:
            if record.error is None:
                self.added += 1
                self.boxes += len(record.boxes)
        self.failed.extend((record.path, record.error) for record in failed)
        return failed

    def summary(self) -> str:
        files = f"{self.found} images"
        if self.videos:
            files = f"{self.found - self.videos} images and {self.videos} videos"
        text = (
            f"{files} in {self.folder}: {self.added} indexed ({self.boxes} persons), "
            f"{self.skipped} already in the index, {len(self.failed)} failed"
        )
        if self.videos:
            text += f"; {self.frames} video frames sampled"
        if self.resumed:
            text += f", {len(self.resumed)} video(s) resumed"
        if self.stopped:
            text += f", {len(self.stopped)} video(s) stopped part-way (frames before kept)"
        if self.changed:
            text += f"; {len(self.changed)} changed since indexed (kept; rebuild to refresh)"
        return text


class PersonSearcher:
    """A detector + an embedder + a gallery index: index folders, search with probes.

    `detector` may be None for a search-only searcher (probes come with their box).
    """

    def __init__(
        self,
        detector: Detector | None,
        embedder: Embedder,
        index: GalleryIndex,
        *,
        batch_images: int = 8,
    ) -> None:
        index.store.check_model(embedder.fingerprint, embedder.dim)
        self.detector = detector
        self.embedder = embedder
        self.index = index
        self.batch_images = max(1, int(batch_images))

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str],
        detector: Detector | None,
        embedder: Embedder,
        *,
        index_kind: str | None = None,
        info: dict[str, str] | None = None,
        batch_images: int = 8,
    ) -> PersonSearcher:
        """Create or open the index at `index_dir` for this embedder (writable: one at a time)."""
        meta = dict(info or {})
        if detector is not None:
            meta.setdefault("detector", detector_fingerprint(detector))
        index = GalleryIndex.open_for_writing(
            index_dir,
            fingerprint=embedder.fingerprint,
            dim=embedder.dim,
            index_kind=index_kind,
            info=meta,
        )
        return cls(detector, embedder, index, batch_images=batch_images)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> PersonSearcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- indexing ------------------------------------------------------------------------

    def index_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        progress: bool = True,
        camera_of: Callable[[Path], int] = camera_from_name,
        sampling: VideoSampling | None = None,
        tracker_settings: TrackerSettings | None = None,
    ) -> IndexReport:
        """Index the images and videos under `folder` (recursively) not indexed yet.

        Unreadable images are recorded as failed, reported, and retried on the next call. An
        exception from the detector or the embedder stops indexing; every batch committed before
        it stays, so calling again resumes (inside a video too). `sampling` says which frames
        of a new video are indexed (default: 2 per second); a video indexed part-way keeps its
        own. `tracker_settings` tune the tracker that links a video's detections.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise PersonSearchError(f"gallery folder not found: {folder}")
        return self.index_paths(
            list_gallery_files(folder),
            progress=progress,
            camera_of=camera_of,
            folder=folder,
            sampling=sampling,
            tracker_settings=tracker_settings,
        )

    def index_paths(
        self,
        paths: Sequence[Path],
        *,
        progress: bool = True,
        camera_of: Callable[[Path], int] = camera_from_name,
        folder: Path | None = None,
        sampling: VideoSampling | None = None,
        tracker_settings: TrackerSettings | None = None,
    ) -> IndexReport:
        """Index the given image and video files not indexed yet (see `index_folder`)."""
        if self.detector is None:
            raise PersonSearchError("indexing needs a detector; this searcher has none")
        check_same_detector(self.index, self.detector)
        paths = [Path(p) for p in paths]
        report = IndexReport(folder=folder or Path("."), found=len(paths))
        report.videos = sum(is_video(p) for p in paths)
        deaths = self._recover_interrupted_image()
        todo = images_to_index(self.index, paths, report)
        images = [p for p in todo if not is_video(p)]
        videos = [p for p in todo if is_video(p)]

        from tqdm import tqdm

        with tqdm(total=len(todo), desc="indexing", unit="file", disable=not progress) as bar:
            for start in range(0, len(images), self.batch_images):
                batch = images[start : start + self.batch_images]
                records, crops = self._read_and_detect(batch, camera_of, deaths)
                self.index.store.add_batch(records, self._embed(crops))
                for record in report.count(records):
                    log.warning("skipped %s: %s", record.path, record.error)
                    if progress:
                        bar.write(f"skipped (cannot read): {record.error}")
                bar.update(len(batch))
            for path in videos:
                self._index_one_video(
                    path, camera_of, deaths, sampling, tracker_settings, report, bar
                )
                bar.update(1)
        return report

    def _index_one_video(
        self,
        path: Path,
        camera_of: Callable[[Path], int],
        deaths: dict[str, int],
        sampling: VideoSampling | None,
        tracker_settings: TrackerSettings | None,
        report: IndexReport,
        bar: Any,
    ) -> None:
        key = str(path.resolve())

        def show(frame: Any) -> None:
            bar.set_postfix_str(f"{path.name} {frame.time_s:.0f} s", refresh=False)

        outcome = index_video(
            self.index.store,
            self.detector,
            self.embedder,
            path,
            key,
            camera=camera_of(path),
            sampling=sampling,
            deaths=deaths.get(key, 0),
            tracker_settings=tracker_settings,
            on_frame=show,
        )
        if outcome.resumed_after is not None:
            report.resumed.append(key)
        report.boxes += outcome.boxes
        report.frames += outcome.frames
        if outcome.failed:
            report.failed.append((key, str(outcome.error)))
            if not bar.disable:
                bar.write(f"skipped (cannot read): {outcome.error}")
            return
        report.added += 1
        if outcome.error is not None:
            report.stopped.append((key, outcome.error))
            log.warning("stopped part-way: %s", outcome.error)
            if not bar.disable:
                bar.write(f"stopped part-way: {outcome.error}")

    def _recover_interrupted_image(self) -> dict[str, int]:
        """Deal with the image a previous run died on; return {path: deaths} to retry it with.

        A death may be a kill from outside, so the image is retried once; after CRASH_LIMIT
        deaths in a row it is recorded as failed (and not retried until its file changes).
        """
        store = self.index.store
        interrupted = store.journal.interrupted_image()
        store.journal.end_image()
        if interrupted is None:
            return {}
        seen = store.known_images().get(interrupted.path)
        video = store.video_progress(interrupted.path).get(interrupted.path)
        if seen is not None and seen.status == "ok" and (video is None or video.complete):
            return {}  # died after it was done with it
        if interrupted.deaths < CRASH_LIMIT:
            log.warning(
                "the last indexing run died while reading or detecting %s; trying it again",
                interrupted.path,
            )
            return {interrupted.path: interrupted.deaths}
        size, mtime = 0, 0.0
        with contextlib.suppress(OSError):  # gone since: recorded all the same
            stat = Path(interrupted.path).stat()
            size, mtime = stat.st_size, stat.st_mtime
        error = crash_error(interrupted.deaths)
        if video is not None:  # indexed part-way: the frames so far stay
            record_stopped(store, interrupted.path, error, self.embedder.dim)
            log.warning("stopped for good: %s: %s", interrupted.path, error)
            return {}
        record = ImageRecord(interrupted.path, None, size, mtime, error=error)
        store.add_batch([record], np.zeros((0, self.embedder.dim), dtype=np.float32))
        log.warning("recorded as failed: %s: %s", interrupted.path, error)
        return {}

    def _read_and_detect(
        self, paths: Sequence[Path], camera_of: Callable[[Path], int], deaths: dict[str, int]
    ) -> tuple[list[ImageRecord], list[np.ndarray]]:
        records, crops = [], []
        journal = self.index.store.journal
        for path in paths:
            key = str(path.resolve())
            # The note outlives only a process death inside: an exception removes it.
            journal.begin_image(key, deaths.get(key, 0))
            try:
                record, image_crops = self._read_and_detect_one(path, key, camera_of)
            finally:
                journal.end_image()
            records.append(record)
            crops += image_crops
        return records, crops

    def _read_and_detect_one(
        self, path: Path, key: str, camera_of: Callable[[Path], int]
    ) -> tuple[ImageRecord, list[np.ndarray]]:
        size, mtime = 0, 0.0
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime
            sha1 = file_digest(path, None, algorithm="sha1")
            scaled = read_scaled(path)
        except (ImageError, OSError) as error:
            message = str(error) if isinstance(error, ImageError) else f"{path}: {error}"
            return ImageRecord(key, None, size, mtime, error=message), []
        # Detected and cropped in the pixels read; recorded in full-resolution pixels.
        boxes, scores = self._detect(scaled.pixels, path)
        crops = [crop_box(scaled.pixels, box) for box in boxes]
        width, height = scaled.size
        record = ImageRecord(
            key,
            sha1,
            size,
            mtime,
            width,
            height,
            camera=camera_of(path),
            boxes=scaled.to_original(boxes),
            scores=scores,
        )
        return record, crops

    def _detect(self, image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return detect_checked(self.detector, image, path)

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        return embed_checked(self.embedder, crops)

    # ---- searching -----------------------------------------------------------------------

    def embed_probe(
        self,
        probe: str | os.PathLike[str] | np.ndarray,
        box: Sequence[float] | None = None,
    ) -> np.ndarray:
        """The probe's feature: the person in `box` of the probe image, or the whole image.

        `box` is in full-resolution pixels of the image as shown (EXIF orientation applied),
        whatever scale a big probe image is read at.
        """
        scaled, source = _load_probe(probe)
        image = scaled.pixels
        if box is not None:
            width, height = scaled.size
            valid = validate_box(box, width, height, source)
            image = crop_box(image, scaled.from_original(valid))
        return self._embed([image])[0]

    def search(
        self,
        probe: str | os.PathLike[str] | np.ndarray,
        box: Sequence[float] | None = None,
        top_k: int = 10,
        *,
        cameras: Iterable[int] | None = None,
        exclude_probe_image: bool = True,
        per_track: bool = True,
    ) -> list[SearchHit]:
        """Rank the gallery's persons by similarity to the probe person, best first.

        `probe` is an image path (or an H x W x 3 array); `box` (x1, y1, x2, y2) marks the person
        in it, or None when the probe is itself a person crop. When the probe image is in the
        gallery, its own boxes are left out (`exclude_probe_image`). A person seen in a video
        is one hit, the best frame of their track, unless `per_track` is False (every sampled
        frame is a hit).
        """
        if int(top_k) <= 0:
            raise PersonSearchError(f"top_k must be positive, got {top_k}")
        feature = self.embed_probe(probe, box)
        excluded = []
        if exclude_probe_image and not isinstance(probe, np.ndarray):
            excluded.append(str(Path(probe).resolve()))
        return self.index.search_one(
            feature, top_k, cameras=cameras, exclude_paths=excluded, per_track=per_track
        )


def images_to_index(index: GalleryIndex, paths: Sequence[Path], report: IndexReport) -> list[Path]:
    """The images `index` does not hold yet (new, or failed before); the others are counted in
    `report` as skipped, and as changed when the file differs from when it was indexed. An image
    the indexing process died on is not retried while its file is unchanged: it is reported as
    failed again."""
    known = index.store.known_images()
    videos = index.store.video_progress()
    todo = []
    for path in paths:
        key = str(path.resolve())  # how the index stores paths
        seen = known.get(key)
        if seen is None:
            todo.append(path)
            continue
        stat = path.stat()
        unchanged = stat.st_size == seen.size and math.isclose(stat.st_mtime, seen.mtime)
        if seen.status == "failed":
            if is_crash_error(seen.error) and unchanged:  # retrying would kill this run too
                report.failed.append((key, str(seen.error)))
            else:
                todo.append(path)
            continue
        if unchanged and key in videos and not videos[key].complete:
            todo.append(path)  # indexed part-way by a run that stopped: resume it
            continue
        report.skipped += 1
        if not unchanged:
            report.changed.append(key)
    return todo


def check_same_detector(index: GalleryIndex, detector: Detector) -> None:
    """Refuse to add boxes of another detector than the one the index already holds."""
    stored, current = index.store.meta.get("detector"), detector_fingerprint(detector)
    if stored is not None and stored != current:
        raise GalleryIndexError(
            f"gallery index {index.folder} holds boxes of detector {stored!r}; adding images with "
            f"detector {current!r} would mix two detectors in one index. Use the same detector, "
            "or build a new index."
        )


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def list_gallery_files(folder: Path) -> list[Path]:
    """Image and video files under `folder`, recursively, in a stable (sorted) order."""
    suffixes = IMAGE_SUFFIXES | set(VIDEO_SUFFIXES)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def validate_box(
    box: Sequence[float], width: int, height: int, source: str = "the probe image"
) -> np.ndarray:
    """Check a probe box against its image; return it clipped, as float32 x1 y1 x2 y2.

    Raises PersonSearchError when it is not 4 finite numbers, has no positive width and height,
    or does not lie inside the image (up to BOX_TOLERANCE pixels).
    """
    try:
        values = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise PersonSearchError(f"probe box {box!r} is not 4 numbers x1,y1,x2,y2") from error
    if values.shape != (4,) or not np.isfinite(values).all():
        raise PersonSearchError(f"probe box {box!r} must be 4 finite numbers x1,y1,x2,y2")
    x1, y1, x2, y2 = values.tolist()
    shown = f"({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if x2 <= x1 or y2 <= y1:
        raise PersonSearchError(
            f"probe box {shown} has no positive size: it needs x2 > x1 and y2 > y1"
        )
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise PersonSearchError(
            f"probe box {shown} lies outside {source}, which is {width} x {height} pixels: "
            f"a box needs 0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}"
        )
    clipped = clip_boxes(values, width, height)
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise PersonSearchError(f"probe box {shown} covers less than one pixel of {source}")
    return clipped.astype(np.float32)


def crop_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The pixels covered by a box (x1 y1 x2 y2, already inside the image), at least 1 x 1."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = crop_bounds(box, width, height)
    return image[y1:y2, x1:x2]


def _load_probe(probe: str | os.PathLike[str] | np.ndarray) -> tuple[ScaledImage, str]:
    if isinstance(probe, np.ndarray):
        if probe.ndim != 3 or probe.shape[2] != 3 or probe.dtype != np.uint8:
            raise PersonSearchError(
                f"a probe array must be H x W x 3 uint8, got {probe.shape} {probe.dtype}"
            )
        height, width = probe.shape[:2]
        return ScaledImage(probe, 1, (width, height)), "the probe array"
    return read_scaled(probe), f"image {probe}"
