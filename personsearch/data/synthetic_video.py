"""A synthetic world in motion: short videos of people walking through several cameras' scenes.

    generate_video_world("data/synthetic-video", cameras=3, identities=8, duration_s=20, seed=0)

writes

    videos/cam<k>.mp4           H.264, `fps` frames per second, one per camera
    queries/<pid>.jpg            one picture of each identity, taken by none of the cameras
    ground_truth.json            per video and frame: every person's box and identity;
                                 per identity: its visits (camera, start, end); the settings

Every identity walks through two or more cameras' views at different times (so the same person is
in several videos: what a search across cameras must find), entering at one edge and leaving at
the other or turning back, getting taller or smaller as it walks towards or away from the
camera, passing in front of and behind others. The people are the still world's (`synthetic.py`):
the same identity model, clothing and body drawing, so a re-id model trained there applies.

From the ground truth a tracker's identity switches and fragmentation, search mAP per track, and
how many of a per-frame pass's tracks a sampled pass still finds can be measured
(`evaluation.tracking`). Determinism: one seed gives the same ground truth and the same frames.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from personsearch.data.synthetic_render import (
    draw_background,
    render_person,
    sample_appearance,
    sample_pose,
)
from personsearch.errors import ConfigError

GROUND_TRUTH_FILE = "ground_truth.json"
FORMAT = "personsearch-video-world/1"


@dataclass(frozen=True)
class VideoWorldSettings:
    cameras: int = 3
    identities: int = 8
    duration_s: float = 20.0
    fps: float = 10.0
    width: int = 640
    height: int = 360
    visits_per_identity: tuple[int, int] = (2, 3)  #: drawn uniformly, at most `cameras`
    visit_s: tuple[float, float] = (4.0, 9.0)  #: how long one walk through a view lasts
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cameras < 2:
            raise ConfigError(f"cameras={self.cameras}: a cross-camera world needs at least 2")
        if self.identities < 1:
            raise ConfigError(f"identities={self.identities} must be >= 1")
        if not (0 < self.fps <= 60 and 1 <= self.duration_s <= 600):
            raise ConfigError(
                f"fps={self.fps} must be in (0, 60] and duration_s={self.duration_s} in [1, 600]"
            )
        if not (64 <= self.width <= 3840 and 64 <= self.height <= 2160):
            raise ConfigError(
                f"frame size {self.width} x {self.height} must be within 64 x 64 and 3840 x 2160"
            )
        low, high = self.visit_s
        if not 0.5 <= low <= high <= self.duration_s:
            raise ConfigError(
                f"visit_s={self.visit_s} must satisfy 0.5 <= low <= high <= "
                f"duration_s ({self.duration_s})"
            )

    @property
    def frames(self) -> int:
        return int(round(self.duration_s * self.fps))


@dataclass(frozen=True)
class Visit:
    """One walk of one identity through one camera's view."""

    pid: int
    camera: int
    start_s: float
    end_s: float
    start_x: float  #: pixels: where the walk starts (the box centre; off-frame: walks in)
    speed_px_s: float  #: signed: + walks right
    near_start: float  #: 0 far (small, at the horizon) to 1 near (tall), at start and end
    near_end: float
    pose_seed: int

    def position(self, time_s: float) -> tuple[float, float]:
        """(x centre in pixels, nearness) at `time_s`, walking at constant speed."""
        t = (time_s - self.start_s) / max(self.end_s - self.start_s, 1e-9)
        return (
            self.start_x + self.speed_px_s * (time_s - self.start_s),
            self.near_start + (self.near_end - self.near_start) * t,
        )


_SMALLEST = 40.0  #: pixels: a person at the horizon


def _height(nearness: float, settings: VideoWorldSettings) -> float:
    tallest = 0.85 * settings.height
    return _SMALLEST * (tallest / _SMALLEST) ** nearness


def plan_visits(settings: VideoWorldSettings) -> list[Visit]:
    """Which identity walks through which camera when (deterministic in the seed).

    People walk at 0.5-1 body heights per second (about 0.9-1.7 m/s for a 1.7 m person), so a
    far person crosses the frame slowly in pixels and a near one fast, as in real footage."""
    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(10,)))
    visits = []
    for pid in range(settings.identities):
        low, high = settings.visits_per_identity
        count = int(min(settings.cameras, rng.integers(low, high + 1)))
        cameras = rng.choice(settings.cameras, size=count, replace=False)
        for camera in cameras:
            length = float(rng.uniform(*settings.visit_s))
            start = float(rng.uniform(0, settings.duration_s - length))
            near_start = float(rng.uniform(0.1, 1.0))
            near_end = float(np.clip(near_start + rng.uniform(-0.2, 0.2), 0.0, 1.0))
            mean_height = _height((near_start + near_end) / 2, settings)
            direction = 1.0 if rng.random() < 0.5 else -1.0
            speed = direction * float(rng.uniform(0.5, 1.0)) * mean_height
            if rng.random() < 0.6:  # walks in from the edge behind it
                start_x = (
                    -0.2 * mean_height if direction > 0 else settings.width + 0.2 * mean_height
                )
            else:  # steps out of a doorway or from behind something
                start_x = float(rng.uniform(0.1, 0.9) * settings.width)
            visits.append(
                Visit(
                    pid,
                    int(camera),
                    start,
                    start + length,
                    start_x,
                    speed,
                    near_start,
                    near_end,
                    int(rng.integers(2**31)),
                )
            )
    return visits


def _person_box(
    visit: Visit, time_s: float, settings: VideoWorldSettings, horizon: int
) -> tuple[float, float, float, float]:
    """The unclipped box of a walking person: perspective puts the near (tall) low in the frame."""
    centre, near = visit.position(time_s)
    tallest = 0.85 * settings.height
    height = _height(near, settings)
    foot = horizon + (settings.height - horizon) * (height / tallest)
    width = 0.38 * height
    return centre - width / 2, foot - height, centre + width / 2, foot


def _visible_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    # A person counts as in view when at least half of the body is inside the frame.
    if (cx2 - cx1) * (cy2 - cy1) < 0.5 * (x2 - x1) * (y2 - y1) or cy2 - cy1 < 20:
        return None
    return cx1, cy1, cx2, cy2


def _render_camera(
    camera: int, visits: list[Visit], appearances: list, settings: VideoWorldSettings, path: Path
) -> list[dict[str, Any]]:
    """Encode one camera's video; return its per-frame ground truth."""
    import av

    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(11, camera)))
    horizon = int(settings.height * rng.uniform(0.3, 0.45))
    background = draw_background(rng, settings.width, settings.height, horizon)
    mine = [v for v in visits if v.camera == camera]
    tallest = int(0.85 * settings.height)
    # Two drawings per walk (strides apart), resized per frame: a walking gait at little cost.
    drawings = {}
    for visit in mine:
        pose_rng = np.random.default_rng(visit.pose_seed)
        poses = [sample_pose(pose_rng) for _ in range(2)]
        mirror = visit.speed_px_s < 0  # face the way the person walks
        drawings[id(visit)] = [
            render_person(appearances[visit.pid], replace(p, mirror=mirror), tallest) for p in poses
        ]
    frames_gt = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264",
            rate=int(round(settings.fps)) if float(settings.fps).is_integer() else settings.fps,
        )
        stream.width, stream.height, stream.pix_fmt = settings.width, settings.height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for index in range(settings.frames):
            time_s = index / settings.fps
            frame = background.copy()
            people = []
            for visit in mine:
                if visit.start_s <= time_s <= visit.end_s:
                    people.append((_person_box(visit, time_s, settings, horizon), visit))
            boxes = []
            for box, visit in sorted(people, key=lambda p: p[0][3]):  # far first, near on top
                x1, y1, x2, y2 = box
                patch = drawings[id(visit)][int(time_s * 2.5) % 2]  # 2.5 steps per second
                h = max(int(round(y2 - y1)), 8)
                w = max(int(round(patch.width * h / patch.height)), 4)
                sprite = patch.resize((w, h), Image.Resampling.BILINEAR)
                left = int(round((x1 + x2) / 2 - w / 2))
                frame.paste(sprite, (left, int(round(y1))), sprite)
                visible = _visible_box(
                    (left, y1, left + w, y1 + h), settings.width, settings.height
                )
                if visible is not None:
                    boxes.append([*visible, visit.pid])
            frames_gt.append({"frame": index, "time_s": round(time_s, 6), "boxes": boxes})
            video_frame = av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames_gt


def _write_queries(folder: Path, appearances: list, settings: VideoWorldSettings) -> dict[str, Any]:
    """One standing picture of each identity against a scene none of the cameras sees."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = {}
    for pid, appearance in enumerate(appearances):
        rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(12, pid)))
        person = render_person(appearance, sample_pose(rng), 200)
        scene = draw_background(rng, person.width + 60, 260, 80)
        scene.paste(person, (30, 40), person)
        name = f"{pid:04d}.jpg"
        scene.save(folder / name, format="JPEG", quality=92)
        queries[str(pid)] = {"image": f"queries/{name}", "box": [30, 40, 30 + person.width, 240]}
    return queries


def generate_video_world(
    out: str | os.PathLike[str], settings: VideoWorldSettings | None = None, progress: bool = False
) -> Path:
    """Write the world into `out` (replaced only when complete: a killed run leaves no half)."""
    settings = settings or VideoWorldSettings()
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
    partial.mkdir(parents=True)
    try:
        app_rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(13,)))
        appearances = [sample_appearance(app_rng) for _ in range(settings.identities)]
        visits = plan_visits(settings)
        (partial / "videos").mkdir()
        videos = {}
        cameras = range(settings.cameras)
        if progress:
            from tqdm import tqdm

            cameras = tqdm(cameras, desc="cameras", unit="video")
        for camera in cameras:
            name = f"videos/cam{camera}.mp4"
            videos[name] = {
                "camera": camera,
                "fps": settings.fps,
                "width": settings.width,
                "height": settings.height,
                "frames": _render_camera(camera, visits, appearances, settings, partial / name),
            }
        truth = {
            "format": FORMAT,
            "settings": asdict(settings),
            "videos": videos,
            "queries": _write_queries(partial / "queries", appearances, settings),
            "visits": [asdict(v) for v in visits],
        }
        (partial / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def read_ground_truth(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The world's ground truth, checked for the format this module writes."""
    path = Path(root) / GROUND_TRUTH_FILE
    try:
        truth = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(
            f"{path} does not exist: not a video world (write one with generate_video_world)"
        ) from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error})") from error
    if truth.get("format") != FORMAT:
        raise ConfigError(f"{path}: format {truth.get('format')!r}, expected {FORMAT!r}")
    return truth


def ground_truth_arrays(truth: dict[str, Any], video: str) -> dict[str, np.ndarray]:
    """One video's boxes as flat arrays: frame, time_s, boxes (x1 y1 x2 y2), pid."""
    rows = [
        (f["frame"], f["time_s"], *b) for f in truth["videos"][video]["frames"] for b in f["boxes"]
    ]
    table = np.array(rows, dtype=np.float64).reshape(-1, 7)
    return {
        "frame": table[:, 0].astype(np.int64),
        "time_s": table[:, 1],
        "boxes": table[:, 2:6],
        "pid": table[:, 6].astype(np.int64),
    }
