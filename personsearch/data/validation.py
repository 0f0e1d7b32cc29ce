"""Validate a dataset folder the way training and evaluation will read it (`personsearch check-data`).

`check_dataset(name, root)` reads the annotations, the search protocols and (unless told not to)
every image header, and returns a `DatasetReport`: the statistics lines and the warnings, in the
order they were found. A problem that makes the folder unusable is raised as one DatasetError or
ImageError naming the file. A report given `on_line` / `on_warning` callbacks passes each entry on
as soon as it is found (the command prints them while the images are still being read).

Module-level imports stay light (numpy, tqdm and the readers are imported where used): the
command imports this module to build its parser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personsearch.data.registry import (
    CLASSIFY_DATASETS,
    CROP_DATASETS,
    READER_DATASETS,
    SCENE_DATASETS,
    load_classify_dataset,
    load_crop_dataset,
    load_scene_dataset,
    load_search_protocol,
)
from personsearch.errors import ConfigError, DatasetError, ImageError, PersonSearchError

#: The datasets `check_dataset` knows: those of data.registry's table with a reader of their own
#: (the registry imports no reader at module level, so the CLI builds its parser from this).
DATASETS = READER_DATASETS
#: A box may extend this far past the image border (annotation rounding) before it is an error:
#: the larger of a few pixels and a small fraction of the image side.
BORDER_TOLERANCE_PX = 8
BORDER_TOLERANCE_FRACTION = 0.01
#: Show a progress bar when checking at least this many images.
PROGRESS_MIN_IMAGES = 200
#: How many example problems a warning lists.
EXAMPLES = 3
#: The protocol files every CUHK-SYSU-layout folder must hold: `evaluate` defaults to TestG100,
#: and the full gallery takes TestG50's queries.
REQUIRED_GALLERY_SIZES = (50, 100)


@dataclass
class DatasetReport:
    """What a dataset check found: statistics `lines` (as printed) and `warnings` (each
    "what: problem"), in the order found; the callbacks, if given, receive each one at once."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    on_line: Callable[[str], None] | None = None
    on_warning: Callable[[str], None] | None = None

    def note(self, line: str) -> None:
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def warn(self, what: str, problems: list[str]) -> None:
        """Up to EXAMPLES of `problems` about `what`, then how many more there were."""
        shown = [f"{what}: {problem}" for problem in problems[:EXAMPLES]]
        if len(problems) > EXAMPLES:
            shown.append(f"{what}: {len(problems) - EXAMPLES} more such problems")
        for warning in shown:
            self.warnings.append(warning)
            if self.on_warning is not None:
                self.on_warning(warning)


def check_dataset(
    name: str,
    root: Path,
    *,
    read_images: bool = True,
    report: DatasetReport | None = None,
    variant: str | None = None,
) -> DatasetReport:
    """Check the dataset `name` (one of DATASETS) at `root`; raises on the first fatal problem.

    read_images=False only checks that the image files exist (faster; box-inside-image checks
    need the image sizes and are skipped). `variant`: CUHK03's labeled (default) or detected."""
    report = report if report is not None else DatasetReport()
    if variant and name != "cuhk03":
        raise ConfigError(f"a variant applies to cuhk03 only, not to {name} (got {variant!r})")
    if name in CROP_DATASETS:
        _check_crops(name, Path(root), read_images, report, variant)
    elif name in CLASSIFY_DATASETS:
        _check_classes(name, Path(root), report)
    elif name in SCENE_DATASETS:
        _check_scenes(name, Path(root), read_images, report)
    else:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return report


# ---------------------------------------------------------------------------------------------
# scene datasets (CUHK-SYSU and datasets in its layout, PRW)


def _check_scenes(name: str, root: Path, read_images: bool, report: DatasetReport) -> None:
    import numpy as np

    dataset = load_scene_dataset(name, root)
    report.note(f"{name} at {root}")
    for split, scenes in (("train", dataset.train), ("test", dataset.test)):
        boxes = sum(len(s.boxes) for s in scenes)
        labelled = sum(int(s.labeled.sum()) for s in scenes)
        report.note(
            f"  {split}: {len(scenes)} images, {boxes} boxes ({labelled} labelled), "
            f"{len(dataset.identities(split))} identities"
        )
    all_boxes = np.concatenate([s.boxes for s in dataset.train + dataset.test] + [np.zeros((0, 4))])
    if len(all_boxes) == 0:
        raise DatasetError(f"{root}: the dataset holds no person boxes")
    check_finite_boxes(dataset.train + dataset.test)
    heights = all_boxes[:, 3] - all_boxes[:, 1]
    widths = all_boxes[:, 2] - all_boxes[:, 0]
    report.note(
        f"  box height {heights.min():g}-{heights.max():g} px, "
        f"width {widths.min():g}-{widths.max():g} px"
    )

    identity_lists = _cuhk_identity_lists if name == "cuhk-sysu" else _prw_identity_lists
    for line in identity_lists(dataset, report):
        report.note(f"  {line}")
    test_scenes = {s.name: s for s in dataset.test}
    for protocol in _protocols(name, root, dataset):
        report.note(f"  protocol {describe_protocol(protocol)}")
        report.warn(f"protocol {protocol.name}", protocol_problems(protocol, test_scenes))

    scenes = dataset.train + dataset.test
    items = [(s.path, s.boxes) for s in scenes]
    sizes = check_images(items, read_images)
    if read_images:
        report.note(
            f"  images: {len(items)} read, every box inside its image (sizes {_size_range(sizes)})"
        )
    else:
        report.note(f"  images: {len(items)} found (not read: --no-images)")


def _protocols(name: str, root: Path, dataset: Any) -> list[Any]:
    """Every search protocol the folder provides (CUHK-SYSU: each TestG<N>.mat found)."""
    if name == "prw":
        from personsearch.data.prw import protocol_from_scenes

        return [protocol_from_scenes(root, dataset.test, cross_camera=c) for c in (False, True)]
    from personsearch.data.cuhk_sysu import PROTOCOL_DIR, available_gallery_sizes, cache_protocols

    sizes = available_gallery_sizes(root)
    if not sizes:
        raise DatasetError(
            f"no protocol file (TestG50.mat ... TestG4000.mat) found in {root / PROTOCOL_DIR}"
        )
    missing = missing_protocol_files(root, len(dataset.test))
    if missing:
        raise DatasetError(
            f"{root / PROTOCOL_DIR} lacks {', '.join(missing)}, which `evaluate` needs (TestG50 "
            "also gives the full gallery, TestG100 is the default; a test set of "
            f"{len(dataset.test)} images has every size up to {len(dataset.test) - 1})"
        )
    cache_protocols(root, sizes)  # first parse of every .mat file, in parallel
    return [load_search_protocol(name, root, gallery_size=size) for size in sizes]


def missing_protocol_files(root: Path, test_images: int) -> list[str]:
    """The TestG<N>.mat files a CUHK-SYSU-layout folder lacks: TestG50 and TestG100 always,
    and every larger size its test set can fill (N <= test images - 1: a gallery never holds
    the query's own image), as the release (6,978 test images: up to 4000) and every
    synthetic world (tiny: 50, 100; small: up to 500) hold them."""
    from personsearch.data.cuhk_sysu import GALLERY_SIZES, PROTOCOL_DIR

    folder = root / PROTOCOL_DIR
    expected = [s for s in GALLERY_SIZES if s in REQUIRED_GALLERY_SIZES or s <= test_images - 1]
    return [f"TestG{s}.mat" for s in expected if not (folder / f"TestG{s}.mat").is_file()]


def check_finite_boxes(scenes: Any) -> None:
    """DatasetError naming the first box with a NaN or infinite coordinate (and how many)."""
    import numpy as np

    bad = [
        (scene, i)
        for scene in scenes
        for i in np.flatnonzero(~np.isfinite(scene.boxes).all(axis=1))
    ]
    if bad:
        scene, i = bad[0]
        box = " ".join(f"{v:g}" for v in scene.boxes[i])
        more = f" ({len(bad) - 1} more such boxes)" if len(bad) > 1 else ""
        raise DatasetError(
            f"{scene.path}: box {i + 1} [x1 y1 x2 y2 = {box}] is not finite "
            f"(NaN or infinite coordinates){more}"
        )


def describe_protocol(protocol: Any) -> str:
    """One line: the protocol's name, queries, gallery lengths and oddities."""
    import numpy as np

    index = protocol.image_index()
    listed = [len(q.gallery) for q in protocol.queries]
    holders = [int(q.holds_person.sum()) for q in protocol.queries]
    text = f"{protocol.name}: {len(protocol.queries)} queries"
    if listed:
        text += f", {_range(listed)} listed images per query, {_range(holders)} holding the person"
    duplicates = sum(len(np.unique(q.gallery)) < len(q.gallery) for q in protocol.queries)
    own = sum(index.get(q.image, -1) in q.gallery for q in protocol.queries)
    if duplicates:
        text += f"; {duplicates} list an image twice"
    if own:
        text += f"; {own} list their own image"
    if protocol.unlisted != "none":
        text += f"; other images as negatives: {protocol.unlisted}"
    return text


def protocol_problems(protocol: Any, test_scenes: dict[str, Any]) -> list[str]:
    """Queries whose person is not where the protocol says, checked against the scenes' labels."""
    import numpy as np

    problems = []
    no_target = 0
    for k, query in enumerate(protocol.queries):
        where = f"query {k + 1} (person {query.pid} in {query.image})"
        scene = test_scenes.get(query.image)
        if scene is None:
            problems.append(f"{where}: not a test image")
            continue
        if not _holds(scene, query.pid, query.box):
            problems.append(f"{where}: the image has no box of that person there")
        if not query.holds_person.any():
            no_target += 1
        for j in query.gallery[query.holds_person]:
            gallery_scene = test_scenes.get(protocol.images[j])
            if gallery_scene is None or not np.any(gallery_scene.pids == query.pid):
                problems.append(
                    f"{where}: listed image {protocol.images[j]} has no box of that person"
                )
    if no_target:
        problems.append(f"{no_target} queries have no gallery image holding their person (AP 0)")
    return problems


def _holds(scene: Any, pid: int, box: Any) -> bool:
    """Whether `scene` labels `pid` on a box overlapping `box` by IoU >= 0.5."""
    import numpy as np

    from personsearch.boxes import box_iou

    boxes = scene.boxes[scene.pids == pid]
    if not len(boxes):
        return False
    # in the boxes' own float32, and a zero union (two empty boxes) counts as overlapping
    iou = box_iou(boxes, box, clip_areas=False, no_union=1.0, dtype=None)[:, 0]
    return bool(np.any(iou >= 0.5))


def _cuhk_identity_lists(dataset: Any, report: DatasetReport) -> list[str]:
    """Cross-check Train.mat's identities with the labels of the training images."""
    from personsearch.data.cuhk_sysu import TRAIN_MAT, read_train_identities

    if not (dataset.root / TRAIN_MAT).is_file():
        return [f"{TRAIN_MAT}: not found (not needed to train or evaluate)"]
    listed = {pid for pid, _ in read_train_identities(dataset.root)}
    found = {int(p) for p in dataset.identities("train")}
    line = f"{TRAIN_MAT}: {len(listed)} identities"
    if listed == found:
        return [line + ", the same as the training images' labels"]
    report.warn(
        TRAIN_MAT,
        [
            f"{len(listed - found)} listed identities are not labelled in the "
            f"training images, {len(found - listed)} labelled ones are not listed"
        ],
    )
    return [line]


def _prw_identity_lists(dataset: Any, report: DatasetReport) -> list[str]:
    """Report ID_train.mat / ID_test.mat beside the identities the frames hold."""
    from personsearch.data.prw import ID_LISTS, read_id_list

    lines = []
    for split, (filename, _) in ID_LISTS.items():
        listed = {int(p) for p in read_id_list(dataset.root, split)}
        found = {int(p) for p in dataset.identities(split)}
        lines.append(
            f"{filename}: {len(listed)} identities listed, {len(found & listed)} of them "
            f"labelled in the {split} frames"
        )
        if found - listed:
            report.warn(
                filename,
                [
                    f"{len(found - listed)} identities labelled in the {split} "
                    f"frames are not listed, e.g. {min(found - listed)}"
                ],
            )
    return lines


# ---------------------------------------------------------------------------------------------
# crop datasets (Market-1501, CUHK03)


def _check_crops(
    name: str, root: Path, read_images: bool, report: DatasetReport, variant: str | None = None
) -> None:
    dataset = load_crop_dataset(name, root, variant)
    report.note(f"{dataset.name} at {root}")
    for split in ("train", "query", "gallery"):
        crops = getattr(dataset, split)
        ids = {c.pid for c in crops if c.pid > 0}
        cameras = sorted({c.camera for c in crops})
        distractors = sum(c.pid == 0 for c in crops)
        text = f"  {split}: {len(crops)} crops, {len(ids)} identities, cameras {cameras}"
        report.note(text + (f", {distractors} distractors" if distractors else ""))
    gallery_views = {(c.pid, c.camera) for c in dataset.gallery}
    gallery_cameras: dict[int, set[int]] = {}
    for pid, camera in gallery_views:
        gallery_cameras.setdefault(pid, set()).add(camera)
    lonely = [c for c in dataset.query if not gallery_cameras.get(c.pid, set()) - {c.camera}]
    if lonely:
        report.warn(
            "query",
            [
                f"{len(lonely)} queries have no gallery crop of their person from "
                f"another camera, e.g. {lonely[0].path.name}"
            ],
        )
    if name == "cuhk03":
        from personsearch.data.cuhk03 import protocol_report

        lines, problems = protocol_report(dataset, variant)
        for line in lines:
            report.note(f"  {line}")
        report.warn(dataset.name, problems)
    crops = dataset.train + dataset.query + dataset.gallery
    sizes = check_images([(c.path, None) for c in crops], read_images)
    if read_images:
        report.note(f"  images: {len(crops)} read (sizes {_size_range(sizes)})")
    else:
        report.note(f"  images: {len(crops)} found (not read: --no-images)")


# ---------------------------------------------------------------------------------------------
# classification datasets (CIFAR-100): every record is read and checked by the reader


def _check_classes(name: str, root: Path, report: DatasetReport) -> None:
    import numpy as np

    from personsearch.data.cifar100 import NUM_CLASSES, RELEASE_RECORDS

    dataset = load_classify_dataset(name, root)
    report.note(f"{name} at {root}")
    for split in ("train", "test"):
        records = getattr(dataset, split)
        per_class = np.bincount(records.fine, minlength=NUM_CLASSES)
        report.note(
            f"  {split}: {len(records)} images ({records.path.name}), "
            f"{int((per_class > 0).sum())} of {NUM_CLASSES} classes, "
            f"{_range(per_class.tolist())} images per class"
        )
        if len(records) != RELEASE_RECORDS[split]:
            report.warn(
                records.path.name,
                [f"{len(records)} records; the release has {RELEASE_RECORDS[split]}"],
            )
    names = "found" if dataset.fine_names else "not found (not needed to train or evaluate)"
    report.note(f"  class names (fine_label_names.txt): {names}")


# ---------------------------------------------------------------------------------------------
# images


def check_images(items: list[tuple[Path, Any]], read_images: bool) -> list[tuple[int, int]]:
    """Check each (image path, boxes or None); return the sizes read. Raises on any problem:
    one DatasetError (a box outside its image) or ImageError naming the first, with a count."""
    from tqdm import tqdm

    from personsearch.data.images import image_size

    problems: list[PersonSearchError] = []
    sizes = []
    progress = tqdm(
        items,
        desc="checking images",
        unit="image",
        mininterval=0.5,
        disable=len(items) < PROGRESS_MIN_IMAGES,
    )
    for path, boxes in progress:
        if not read_images:
            if not path.is_file():
                problems.append(ImageError(f"image not found: {path}"))
            continue
        try:
            size = image_size(path)  # header only: a decompression bomb is refused unexpanded
        except ImageError as error:
            problems.append(error)
            continue
        sizes.append(size)
        if boxes is not None:
            problem = box_outside(path, boxes, size)
            if problem:
                problems.append(DatasetError(problem))
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        # ImageError for every image problem, its refused-by-policy subclass included
        kind = DatasetError if isinstance(first, DatasetError) else ImageError
        raise kind(f"{first}{more}")
    return sizes


def box_outside(path: Path, boxes: Any, size: tuple[int, int]) -> str | None:
    """A message for the first box extending past the image border beyond the tolerance."""
    import numpy as np

    width, height = size
    tol_x = max(BORDER_TOLERANCE_PX, BORDER_TOLERANCE_FRACTION * width)
    tol_y = max(BORDER_TOLERANCE_PX, BORDER_TOLERANCE_FRACTION * height)
    excess = np.stack(
        [
            (-boxes[:, 0]) / tol_x,
            (-boxes[:, 1]) / tol_y,
            (boxes[:, 2] - width) / tol_x,
            (boxes[:, 3] - height) / tol_y,
        ],
        axis=1,
    )
    bad = np.flatnonzero((excess > 1).any(axis=1))
    if not bad.size:
        return None
    i = int(bad[0])
    box = " ".join(f"{v:g}" for v in boxes[i])
    return (
        f"{path}: box {i + 1} [x1 y1 x2 y2 = {box}] extends outside the {width}x{height} image "
        f"({len(bad)} such boxes in this image)"
    )


# ---------------------------------------------------------------------------------------------
# small helpers


def _range(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def _size_range(sizes: list[tuple[int, int]]) -> str:
    if not sizes:
        return "none"
    widths = [w for w, _ in sizes]
    heights = [h for _, h in sizes]
    return f"{_range(widths)} x {_range(heights)} px"
