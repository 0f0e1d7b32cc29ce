"""A procedural person-search world written in CUHK-SYSU's own layout: `personsearch synth`.

No download: identities with stable clothing, body shape and accessories are drawn into scenes at
widely varying scales (30 pixels to most of the image height, log-uniform like CUHK-SYSU's
37-793), with unlabelled background people, clutter and occlusion. The result reads with the
CUHK-SYSU reader: Image/SSM/s<k>.jpg, annotation/{Images,pool,Person}.mat and
annotation/test/train_test/{Train,TestG<N>}.mat, mirroring the released .mat structures.

Determinism: the world plan comes from `SeedSequence(seed, spawn_key=(0,))`, identity i from
`(1, i)` and scene k from `(2, k)`, so scenes render in any worker process in any order and the
same seed gives the same bytes.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from personsearch.data.synthetic_mat import Cell, Struct, encode_fields, write_mat
from personsearch.data.synthetic_previews import write_contact_sheet, write_scale_histogram
from personsearch.data.synthetic_render import (
    CLUTTER_KINDS,
    Appearance,
    clutter_extent,
    draw_background,
    draw_clutter,
    render_person,
    sample_appearance,
    sample_pose,
)
from personsearch.errors import ConfigError, DatasetError
from personsearch.io import write_json

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
JPEG_QUALITY = 90
_OCCLUSION_LIMIT = {True: 0.3, False: 0.5}  # labelled people stay more visible than background ones
_HARD_OCCLUSION = 0.15  # ishard = 1 above this occluded fraction


@dataclass(frozen=True)
class SynthPreset:
    """The size of a synthetic world."""

    name: str
    train_scenes: int
    test_scenes: int
    train_ids: int
    test_ids: int
    image_height: tuple[int, int]  #: scene heights are drawn uniformly in this range
    aspect: tuple[float, float] = (1.25, 1.5)
    min_box_height: int = 40
    max_box_fraction: float = 0.9  #: tallest person as a fraction of the image height
    background_people: tuple[int, int] = (1, 4)
    clutter: tuple[int, int] = (1, 5)
    extra_appearances: float = 1.0  #: Poisson mean of appearances beyond the required two
    max_labelled_per_scene: int = 4


PRESETS: dict[str, SynthPreset] = {
    # seconds: enough test images for TestG50 and TestG100
    "tiny": SynthPreset(
        "tiny", 80, 120, 40, 30, (224, 256), background_people=(1, 3), clutter=(1, 3)
    ),
    # the demo: trains and evaluates on a CPU
    "small": SynthPreset("small", 1232, 768, 600, 320, (384, 448)),
    # CUHK-SYSU's size: 18,184 scenes, 8,432 identities, 2,900 queries
    "full": SynthPreset("full", 11206, 6978, 5532, 2900, (450, 880), max_labelled_per_scene=5),
}


@dataclass(frozen=True)
class SceneSpec:
    """Everything a worker needs to render one scene."""

    index: int
    name: str
    path: str
    seed: int
    height: int
    width: int
    labelled: tuple[tuple[int, Appearance], ...]  #: (identity number, appearance)
    background: int
    clutter: int
    preset: SynthPreset


@dataclass
class SceneResult:
    """The annotation a rendered scene yields; boxes are integer x, y, w, h."""

    name: str
    width: int
    height: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  #: identity number, -1 for background people
    hard: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- planning


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def plan_world(
    preset: SynthPreset, seed: int, image_dir: Path
) -> tuple[list[SceneSpec], list[bool]]:
    """Decide every scene's size and labelled identities; return specs and an is-test flag each."""
    rng = _rng(seed, 0)
    n_scenes = preset.train_scenes + preset.test_scenes
    is_test = np.zeros(n_scenes, dtype=bool)
    is_test[rng.permutation(n_scenes)[: preset.test_scenes]] = True
    scenes_of_split = {False: np.flatnonzero(~is_test), True: np.flatnonzero(is_test)}
    ids_of_split = {
        False: range(1, preset.train_ids + 1),
        True: range(preset.train_ids + 1, preset.train_ids + preset.test_ids + 1),
    }
    holders: list[list[int]] = [[] for _ in range(n_scenes)]
    for split in (False, True):
        _assign_identities(rng, preset, ids_of_split[split], scenes_of_split[split], holders)

    appearances = {
        pid: sample_appearance(_rng(seed, 1, pid))
        for pid in range(1, preset.train_ids + preset.test_ids + 1)
    }
    specs = []
    for k in range(n_scenes):
        height = int(rng.integers(preset.image_height[0], preset.image_height[1] + 1)) // 2 * 2
        width = int(height * rng.uniform(*preset.aspect)) // 2 * 2
        name = f"s{k + 1}.jpg"
        specs.append(
            SceneSpec(
                index=k,
                name=name,
                path=str(image_dir / name),
                seed=seed,
                height=height,
                width=width,
                labelled=tuple((pid, appearances[pid]) for pid in holders[k]),
                background=int(
                    rng.integers(preset.background_people[0], preset.background_people[1] + 1)
                ),
                clutter=int(rng.integers(preset.clutter[0], preset.clutter[1] + 1)),
                preset=preset,
            )
        )
    return specs, is_test.tolist()


def _assign_identities(
    rng: np.random.Generator,
    preset: SynthPreset,
    ids: range,
    scenes: np.ndarray,
    holders: list[list[int]],
) -> None:
    """Put each identity into 2 or more distinct scenes of its split, balancing the load."""
    counts = 2 + np.minimum(rng.poisson(preset.extra_appearances, len(ids)), 4)
    capacity = preset.max_labelled_per_scene
    if counts.sum() > capacity * len(scenes):
        raise ConfigError(f"preset {preset.name}: too many identity appearances for its scenes")
    for pid, count in zip(ids, counts, strict=True):
        chosen: set[int] = set()
        while len(chosen) < min(count, len(scenes)):
            scene = int(scenes[rng.integers(len(scenes))])
            if scene not in chosen and len(holders[scene]) < capacity:
                chosen.add(scene)
        for scene in sorted(chosen):
            holders[scene].append(pid)


# --------------------------------------------------------------------------- rendering


def _coverage(box: np.ndarray, occluders: list[np.ndarray]) -> float:
    """Fraction of `box` (x1 y1 x2 y2) covered by the union of `occluders`, on a point grid."""
    if not occluders:
        return 0.0
    xs = np.linspace(box[0], box[2], 10)
    ys = np.linspace(box[1], box[3], 20)
    px, py = (a.reshape(-1, 1) for a in np.meshgrid(xs, ys))
    occ = np.stack(occluders)
    inside = (px >= occ[:, 0]) & (px <= occ[:, 2]) & (py >= occ[:, 1]) & (py <= occ[:, 3])
    return float(inside.any(axis=1).mean())


class _Layout:
    """Placed items (people and clutter) with depth = box bottom: lower in the image is nearer."""

    def __init__(self) -> None:
        self.boxes: list[np.ndarray] = []
        self.person_limit: list[float | None] = []  # occlusion limit, None for clutter

    def occluded(self, box: np.ndarray, extra: np.ndarray | None = None) -> float:
        front = [b for b in self.boxes if b[3] > box[3]]
        if extra is not None and extra[3] > box[3]:
            front.append(extra)
        return _coverage(box, front)

    def fits(self, box: np.ndarray, limit: float | None) -> bool:
        if limit is not None and self.occluded(box) > limit:
            return False
        return all(
            other_limit is None or box[3] <= other[3] or self.occluded(other, box) <= other_limit
            for other, other_limit in zip(self.boxes, self.person_limit, strict=True)
        )

    def add(self, box: np.ndarray, limit: float | None) -> None:
        self.boxes.append(box)
        self.person_limit.append(limit)


def _foot_y(
    rng: np.random.Generator, height: float, tallest: float, horizon: int, image_h: int
) -> float:
    # perspective: the ground point drops from the horizon as people get taller (nearer)
    return horizon + (image_h - horizon) * (height / tallest) * rng.uniform(0.8, 1.0)


def render_scene(spec: SceneSpec) -> SceneResult:
    """Render one scene to its JPEG and return its annotation (worker entry point)."""
    rng = _rng(spec.seed, 2, spec.index)
    preset, w_img, h_img = spec.preset, spec.width, spec.height
    horizon = int(h_img * rng.uniform(0.28, 0.5))
    image = draw_background(rng, w_img, h_img, horizon)
    tallest = preset.max_box_fraction * h_img
    log_lo, log_hi = math.log(preset.min_box_height), math.log(tallest)
    layout = _Layout()
    people: list[tuple[np.ndarray, Image.Image, int]] = []  # box, patch, pid
    wanted = [(pid, app) for pid, app in spec.labelled]
    wanted += [(-1, sample_appearance(rng)) for _ in range(spec.background)]
    for pid, app in wanted:
        labelled = pid >= 0
        limit = _OCCLUSION_LIMIT[labelled]
        height = math.exp(rng.uniform(log_lo, log_hi))
        placed = None
        for attempt in range(30):
            if attempt % 10 == 0:  # a fresh, smaller drawing every ten failed positions
                h = int(max(preset.min_box_height, round(height * 0.75 ** (attempt // 10))))
                patch = render_person(app, sample_pose(rng), h)
            x = rng.uniform(0, max(1, w_img - patch.width))
            foot = _foot_y(rng, h, tallest, horizon, h_img)
            y = float(np.clip(foot - h, 0, h_img - h))
            box = np.array([x, y, x + patch.width, y + h]).round()
            if layout.fits(box, limit):
                placed = box
                break
        # a labelled person must appear (and every scene holds someone): accept the last position;
        # a background person who does not fit is simply left out
        if placed is None and not (labelled or not people):
            continue
        if placed is None:
            placed = box
        layout.add(placed, limit)
        people.append((placed, patch, pid))

    clutter = []
    for _ in range(spec.clutter):
        kind = CLUTTER_KINDS[int(rng.integers(len(CLUTTER_KINDS)))]
        ref = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = clutter_extent(kind, ref)
        for _ in range(10):
            x = rng.uniform(-cw / 3, w_img - 2 * cw / 3)
            bottom = min(_foot_y(rng, ref, tallest, horizon, h_img), h_img)
            box = np.array([x, bottom - ch, x + cw, bottom]).round()
            clipped = np.clip(box, 0, [w_img, h_img, w_img, h_img])
            if layout.fits(clipped, None):
                layout.add(clipped, None)
                clutter.append((box, kind))
                break

    _compose(rng, image, people, clutter)
    result = SceneResult(spec.name, w_img, h_img)
    for box, _, pid in people:
        x1, y1, x2, y2 = (int(v) for v in box)
        result.boxes.append((x1, y1, x2 - x1, y2 - y1))
        result.pids.append(pid)
        result.hard.append(int(layout.occluded(box) > _HARD_OCCLUSION))
    image.save(spec.path, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    return result


SHARP_HEIGHT = 110  #: people this tall or taller get only the mildest capture effects
BLURRY_HEIGHT = 40  #: people this small get the strongest


def capture_degradation(height: float) -> float:
    """How strongly the camera degrades a person `height` pixels tall: 0 (sharp) to 1."""
    return float(np.clip((SHARP_HEIGHT - height) / (SHARP_HEIGHT - BLURRY_HEIGHT), 0.0, 1.0))


def _degrade_person(
    rng: np.random.Generator, image: Image.Image, box: tuple[int, int, int, int], alpha: Image.Image
) -> None:
    """Blur, sensor noise and JPEG loss on one painted person, growing as the person gets smaller.

    A far (small) person is seen through more optical blur, more noise relative to the signal and
    coarser compression, as in real surveillance frames; this is what makes their mid-scale cues
    unreadable below about 50 pixels. Only the person's own pixels change (through its alpha
    mask), so no rectangle around a small person gives the detector a shortcut.
    """
    strength = capture_degradation(box[3] - box[1])
    sigma = rng.uniform(0.0, 0.35) + strength * rng.uniform(0.6, 1.1)
    noise = 2.0 + 8.0 * strength
    quality = int(round(92 - 57 * strength))
    noise_seed = int(rng.integers(2**31))
    region = image.crop(box)
    degraded = region.filter(ImageFilter.GaussianBlur(sigma)) if sigma > 0.1 else region
    if strength == 0.0:  # a near person: the scene's own noise and JPEG are all it gets
        image.paste(Image.composite(degraded, region, alpha), box[:2])
        return
    pixels = np.asarray(degraded, dtype=np.float32)
    pixels = pixels + np.random.default_rng(noise_seed).normal(0.0, noise, pixels.shape).astype(
        np.float32
    )
    degraded = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    degraded.save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        degraded = decoded.convert("RGB")
    image.paste(Image.composite(degraded, region, alpha), box[:2])


def _compose(rng: np.random.Generator, image: Image.Image, people: list, clutter: list) -> None:
    """Paint people and clutter far to near; per-sighting lighting, blur and shadow; sensor noise."""
    draw = ImageDraw.Draw(image)
    items = [(b[3], 0, i) for i, (b, _, _) in enumerate(people)]
    items += [(b[3], 1, i) for i, (b, _) in enumerate(clutter)]
    for _, is_clutter, i in sorted(items):
        if is_clutter:
            box, kind = clutter[i]
            draw_clutter(rng, draw, kind, tuple(int(v) for v in box))
            continue
        box, patch, _ = people[i]
        x1, y1, x2, y2 = (int(v) for v in box)
        ground = np.asarray(image.getpixel(((x1 + x2) // 2, min(y2, image.height - 1))), float)
        shadow = tuple(int(v) for v in ground * 0.6)
        draw.ellipse(
            [
                x1 - (x2 - x1) * 0.1,
                y2 - (y2 - y1) * 0.025,
                x2 + (x2 - x1) * 0.1,
                y2 + (y2 - y1) * 0.02,
            ],
            fill=shadow,
        )
        rgba = np.asarray(patch, dtype=np.float32)
        light = rng.uniform(0.72, 1.2) * rng.uniform(0.92, 1.08, 3)
        rgba[..., :3] = np.clip(rgba[..., :3] * light, 0, 255)
        lit = Image.fromarray(rgba.astype(np.uint8), "RGBA")
        image.paste(lit, (x1, y1), lit)
        _degrade_person(rng, image, (x1, y1, x2, y2), lit.getchannel("A"))
    gain, amplitude = rng.uniform(0.85, 1.12), int(rng.integers(2, 11))
    # uniform integer noise: as good as Gaussian sensor noise here, and several times cheaper
    pixels = np.asarray(image, dtype=np.float32) * np.float32(gain)
    pixels += rng.integers(-amplitude, amplitude + 1, pixels.shape, dtype=np.int16)
    np.clip(pixels, 0, 255, out=pixels)
    image.paste(Image.fromarray(pixels.astype(np.uint8), "RGB"))


# --------------------------------------------------------------------------- .mat structures


def _xywh(box: tuple[int, int, int, int]) -> np.ndarray:
    return np.array([box], dtype=np.uint16)


def _flag(value: int) -> np.ndarray:
    return np.array([[value]], dtype=np.uint8)


def _count(value: int) -> np.ndarray:
    return np.array([[value]], dtype=np.float64)


_ABSENT = np.zeros((1, 0), dtype=np.float64)  # MATLAB [] where a gallery image lacks the person
_SCENE_FIELDS = ("imname", "idlocate", "ishard")


def write_annotations(
    root: Path, results: list[SceneResult], is_test: list[bool], preset: SynthPreset, seed: int
) -> dict[str, int]:
    """Write Images, pool, Person, Train and TestG<N> .mat files; return the gallery sizes' query counts."""
    header = f"MATLAB 5.0 MAT-file, Platform: personsearch synth, preset {preset.name}, seed {seed}"
    annotation = root / "annotation"
    protocol_dir = annotation / "test" / "train_test"
    protocol_dir.mkdir(parents=True, exist_ok=True)
    images = [
        (
            r.name,
            _count(len(r.boxes)),
            Struct(
                ("idlocate", "ishard"),
                [(_xywh(b), _flag(h)) for b, h in zip(r.boxes, r.hard, strict=True)],
            ),
        )
        for r in results
    ]
    write_mat(
        annotation / "Images.mat", "Img", Struct(("imname", "nAppear", "box"), images), header
    )
    test_names = [r.name for r, test in zip(results, is_test, strict=True) if test]
    write_mat(annotation / "pool.mat", "pool", Cell(test_names), header)

    sightings: dict[int, list[tuple[str, tuple[int, int, int, int], int]]] = {}
    for r in results:
        for box, pid, hard in zip(r.boxes, r.pids, r.hard, strict=True):
            if pid >= 0:
                sightings.setdefault(pid, []).append((r.name, box, hard))
    train_ids = range(1, preset.train_ids + 1)
    test_ids = range(preset.train_ids + 1, preset.train_ids + preset.test_ids + 1)

    def person(pid: int) -> tuple:
        scenes = [(name, _xywh(box), _flag(hard)) for name, box, hard in sightings[pid]]
        return (f"p{pid}", _count(len(scenes)), Struct(_SCENE_FIELDS, scenes))

    person_fields = ("idname", "nAppear", "scene")
    write_mat(
        annotation / "Person.mat",
        "Person",
        Struct(person_fields, [person(pid) for pid in sorted(sightings)]),
        header,
    )
    train = Cell([Struct(person_fields, [person(pid)]) for pid in train_ids])
    write_mat(protocol_dir / "Train.mat", "Train", train, header)

    rng = _rng(seed, 3)
    # "this image, person absent" is the same bytes in every gallery: encode it once per image
    absent = {name: encode_fields(_SCENE_FIELDS, (name, _ABSENT, _ABSENT)) for name in test_names}
    queries, galleries = [], []
    for pid in test_ids:
        seen = sightings[pid]
        own = int(rng.integers(len(seen)))
        name, box, hard = seen[own]
        queries.append(
            Struct(_SCENE_FIELDS + ("idname",), [(name, _xywh(box), _flag(hard), f"p{pid}")])
        )
        holding = {s[0] for s in seen}
        positives = [
            encode_fields(_SCENE_FIELDS, (n, _xywh(b), _flag(h)))
            for i, (n, b, h) in enumerate(seen)
            if i != own
        ]
        others = [n for n in test_names if n not in holding]
        galleries.append(positives + [absent[others[i]] for i in rng.permutation(len(others))])
    written = {}
    for size in GALLERY_SIZES:  # nested: each query's TestG50 gallery is a prefix of its TestG100
        if size > len(test_names) - 1:
            break
        rows = [
            (q, Struct(_SCENE_FIELDS, g[:size])) for q, g in zip(queries, galleries, strict=True)
        ]
        write_mat(
            protocol_dir / f"TestG{size}.mat",
            f"TestG{size}",
            Struct(("Query", "Gallery"), rows),
            header,
        )
        written[f"TestG{size}"] = len(rows)
    return written


# --------------------------------------------------------------------------- the whole world


def world_stats(
    results: list[SceneResult],
    is_test: list[bool],
    preset: SynthPreset,
    seed: int,
    protocols: dict[str, int],
) -> dict:
    """Counts and scale statistics of a generated world (what stats.json holds)."""
    heights = np.array([b[3] for r in results for b in r.boxes], dtype=np.float64)
    pids = np.array([p for r in results for p in r.pids])
    labelled_ids = {
        split: sorted(
            {
                p
                for r, t in zip(results, is_test, strict=True)
                if t == split
                for p in r.pids
                if p >= 0
            }
        )
        for split in (False, True)
    }
    edges = np.geomspace(max(1.0, heights.min()), heights.max() + 1, 25)
    counts, _ = np.histogram(heights, bins=edges)
    return {
        "preset": preset.name,
        "seed": seed,
        "scenes": {
            "train": int(len(is_test) - sum(is_test)),
            "test": int(sum(is_test)),
            "total": len(results),
        },
        "boxes": {
            "labelled": int((pids >= 0).sum()),
            "background": int((pids < 0).sum()),
            "total": int(len(pids)),
            "hard": int(sum(sum(r.hard) for r in results)),
        },
        "identities": {"train": len(labelled_ids[False]), "test": len(labelled_ids[True])},
        "protocols": protocols,
        "queries": preset.test_ids,
        "image_width": [min(r.width for r in results), max(r.width for r in results)],
        "image_height": [min(r.height for r in results), max(r.height for r in results)],
        "box_height": {
            "min": int(heights.min()),
            "max": int(heights.max()),
            "mean": round(float(heights.mean()), 2),
            "percentiles": {
                str(q): round(float(np.percentile(heights, q)), 1) for q in (5, 25, 50, 75, 95)
            },
            "histogram": {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()},
        },
    }


def generate_world(
    out: str | os.PathLike[str],
    preset: str | SynthPreset = "tiny",
    seed: int = 0,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """Generate a synthetic world into `out` atomically and return its statistics.

    The world is built in a sibling `<out>.partial-...` folder and renamed onto `out` only when
    complete. An existing non-empty `out` is replaced only with `force`. `workers` = 0 renders in
    this process; None uses one process per CPU for the larger presets.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(
                f"unknown synthetic preset {preset!r}: choose one of {', '.join(PRESETS)}"
            )
        preset = PRESETS[preset]
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DatasetError(
            f"output folder {out} exists and is not empty: pass --force to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}-{secrets.token_hex(3)}")
    partial.mkdir()
    try:
        image_dir = partial / "Image" / "SSM"
        image_dir.mkdir(parents=True)
        specs, is_test = plan_world(preset, seed, image_dir)
        results = _render_all(specs, workers, progress)
        protocols = write_annotations(partial, results, is_test, preset, seed)
        stats = world_stats(results, is_test, preset, seed, protocols)
        write_json(partial / "stats.json", stats)
        write_contact_sheet(partial / "contact_sheet.png", image_dir, results, is_test)
        write_scale_histogram(partial / "scale_histogram.png", results, stats)
        _replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return stats


def _render_all(specs: list[SceneSpec], workers: int | None, progress: bool) -> list[SceneResult]:
    from tqdm import tqdm

    if workers is None:
        workers = 0 if len(specs) <= 300 else (os.cpu_count() or 1)
    bar = tqdm(total=len(specs), desc="rendering scenes", unit="scene", disable=not progress)
    try:
        if workers <= 1:
            results = []
            for spec in specs:
                results.append(render_scene(spec))
                bar.update()
            return results
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = []
            for result in pool.imap(render_scene, specs, chunksize=16):  # ordered: deterministic
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


def _replace(partial: Path, out: Path) -> None:
    """Move the finished world onto `out`, removing what was there only after the move."""
    if not out.exists():
        os.rename(partial, out)
        return
    old = partial.with_name(partial.name.replace(".partial-", ".old-"))
    os.rename(out, old)
    os.rename(partial, out)
    shutil.rmtree(old)
