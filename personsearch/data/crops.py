"""Re-id crops: from scene records (labelled boxes plus matching detections) or crop datasets.

Identity labels become contiguous class indices in sorted pid order, so every DDP rank and every
rerun agrees on them. A crop dataset either cuts boxes out of the scene images on the fly or
reads them from a cache folder filled once (`build_crop_cache`), so big scenes are not decoded
again every epoch.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from personsearch.boxes import box_iou, crop_bounds
from personsearch.data.images import open_rgb
from personsearch.data.scenes import UNLABELED, Crop, Scene
from personsearch.errors import DatasetError, ResultsError
from personsearch.evaluation.results_file import read_npz
from personsearch.io import atomic_path

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropSample:
    """One re-id sample: a box in an image (or the whole image when box is None)."""

    image: Path
    box: Box | None
    pid: int
    camera: int
    source: str = "gt"  #: "gt" (annotated box), "det" (matched detection) or "crop" (crop file)


def scene_crop_samples(
    scenes: Sequence[Scene],
    detections: Mapping[str, np.ndarray] | None = None,
    iou_threshold: float = 0.5,
) -> list[CropSample]:
    """Training crops of a scene split: every labelled box, plus each detection whose best-
    overlapping annotated box is labelled with IoU > `iou_threshold` (it takes that identity).

    Matching against all annotated boxes first keeps a detection of an unlabelled person that
    brushes a labelled one from taking the wrong identity.
    """
    samples = []
    for scene in scenes:
        for box, pid in zip(scene.boxes, scene.pids, strict=True):
            if pid != UNLABELED:
                samples.append(CropSample(scene.path, _as_box(box), int(pid), scene.camera))
        found = detections.get(scene.name) if detections else None
        if found is None or len(found) == 0 or len(scene.boxes) == 0:
            continue
        iou = box_iou(found, scene.boxes, clip_areas=False)
        best = iou.argmax(axis=1)
        for row, match in enumerate(best):
            pid = int(scene.pids[match])
            if pid != UNLABELED and iou[row, match] > iou_threshold:
                samples.append(
                    CropSample(scene.path, _as_box(found[row]), pid, scene.camera, "det")
                )
    return samples


def _as_box(box: np.ndarray) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1, y1, x2, y2)


def crop_file_samples(crops: Sequence[Crop]) -> list[CropSample]:
    """Samples of a crop dataset (Market-1501): each file is one whole crop."""
    return [CropSample(c.path, None, int(c.pid), int(c.camera), "crop") for c in crops]


def identity_map(samples: Sequence[CropSample]) -> dict[int, int]:
    """pid -> class index, in sorted pid order (the same on every rank and every run)."""
    return {pid: index for index, pid in enumerate(sorted({s.pid for s in samples}))}


def scene_eval_samples(scenes: Sequence[Scene]) -> tuple[list[CropSample], list[CropSample]]:
    """Query and gallery crops for re-id on the labelled boxes of test scenes.

    Gallery: every labelled box. Query: per identity seen in two or more images, its first box
    (in scene order). Each scene index serves as the camera id, so the Market-1501 rule (drop
    same identity and same camera) removes exactly the query's own image from its gallery.
    """
    gallery: list[CropSample] = []
    images_of: dict[int, set[int]] = defaultdict(set)
    for index, scene in enumerate(scenes):
        for box, pid in zip(scene.boxes, scene.pids, strict=True):
            if pid != UNLABELED:
                gallery.append(CropSample(scene.path, _as_box(box), int(pid), index))
                images_of[int(pid)].add(index)
    queries, seen = [], set()
    for sample in gallery:
        if sample.pid not in seen and len(images_of[sample.pid]) > 1:
            seen.add(sample.pid)
            queries.append(sample)
    return queries, gallery


def load_detections(
    path: str | os.PathLike[str], score_thresh: float = 0.5
) -> dict[str, np.ndarray]:
    """Read detections as {image name: K x 4 boxes}, from a file in the results-file layout.

    The file is what `personsearch detect` (or any system) writes: `image_names` (M), `det_image`
    (K, index into image_names), `det_boxes` (K x 4, x1y1x2y2) and optionally `det_scores` (K);
    detections scored below `score_thresh` are left out.
    """
    path = Path(path)
    arrays = read_npz(path, "detections file")
    missing = [k for k in ("image_names", "det_image", "det_boxes") if k not in arrays]
    if missing:
        raise ResultsError(f"detections {path} lacks arrays {missing} (has {sorted(arrays)})")
    names, boxes, index = arrays["image_names"], arrays["det_boxes"], arrays["det_image"]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(index) != len(boxes):
        raise ResultsError(
            f"detections {path}: det_boxes must be K x 4 with K det_image entries, got "
            f"{boxes.shape} and {index.shape}"
        )
    if len(index) and (index.min() < 0 or index.max() >= len(names)):
        raise ResultsError(f"detections {path}: det_image outside 0..{len(names) - 1}")
    if "det_scores" in arrays:
        keep = arrays["det_scores"] >= score_thresh
        boxes, index = boxes[keep], index[keep]
    order = np.argsort(index, kind="stable")
    split = np.searchsorted(index[order], np.arange(len(names) + 1))
    return {
        str(name): boxes[order[split[i] : split[i + 1]]].astype(np.float32)
        for i, name in enumerate(names)
    }


# --------------------------------------------------------------------------------------------
# pixels


def cut_crop(image: Image.Image, box: Box | None) -> Image.Image:
    """The box's pixels (rounded outwards, clipped to the image, at least 1 x 1)."""
    if box is None:
        return image
    return image.crop(crop_bounds(box, *image.size))


def crop_cache_path(cache_dir: str | os.PathLike[str], sample: CropSample) -> Path:
    """Where a sample's crop lives in a cache folder: a hash of its image (path, size, mtime) and box.

    The image's size and modification time are part of the key so that a dataset regenerated or
    replaced at the same path (a new synthetic world, say) never reads the old world's crops.
    """
    path = Path(sample.image).resolve()
    try:
        stat = path.stat()
        version = f"{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:  # a missing image fails later, where it is read, with its own clear error
        version = "missing"
    key = f"{path}|{version}|{sample.box}"
    digest = hashlib.sha1(key.encode()).hexdigest()
    return Path(cache_dir) / digest[:2] / f"{digest[2:18]}.png"


def build_crop_cache(
    samples: Sequence[CropSample],
    cache_dir: str | os.PathLike[str],
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> int:
    """Write the crops missing from `cache_dir` (PNG, lossless), decoding each scene once.

    Ranks split the images between them; writes are atomic, so concurrent or interrupted
    builds never leave a broken file. Returns how many crops this rank wrote.
    """
    by_image: dict[Path, list[CropSample]] = defaultdict(list)
    for sample in samples:
        if sample.box is not None and not crop_cache_path(cache_dir, sample).is_file():
            by_image[Path(sample.image)].append(sample)
    images = sorted(by_image)[rank::world_size]
    if progress:
        from tqdm import tqdm

        images = tqdm(images, desc="caching crops", unit="image")
    written = 0
    for image_path in images:
        image = open_rgb(image_path)
        for sample in by_image[image_path]:
            target = crop_cache_path(cache_dir, sample)
            with atomic_path(target) as tmp:
                cut_crop(image, sample.box).save(tmp, format="PNG")
            written += 1
    return written


class CropImageDataset(Dataset):
    """Person crops as (image tensor, class index) pairs.

    An item key is an index or an `(index, seed, epoch)` triple from `EpochSampler`; with a
    triple the transform draws from `np.random.default_rng((seed, epoch, index))`.
    Samples whose pid is not in `labels` get class -1 (evaluation sets need no classes).
    """

    def __init__(
        self,
        samples: Sequence[CropSample],
        transform: Callable[[Image.Image, np.random.Generator | None], torch.Tensor],
        labels: Mapping[int, int] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not samples:
            raise DatasetError("no crops to train or evaluate on (no labelled boxes found)")
        self.samples = list(samples)
        self.transform = transform
        self.labels = dict(labels) if labels is not None else identity_map(self.samples)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        """The sample's crop as an RGB image (from the cache when it holds it)."""
        sample = self.samples[index]
        if self.cache_dir is not None and sample.box is not None:
            cached = crop_cache_path(self.cache_dir, sample)
            if cached.is_file():
                return open_rgb(cached)
        return cut_crop(open_rgb(sample.image), sample.box)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            index, seed, epoch = key
            rng = np.random.default_rng((seed, epoch, index))
        else:
            index, rng = key, None
        image = self.transform(self.load(index), rng)
        return image, self.labels.get(self.samples[index].pid, -1)
