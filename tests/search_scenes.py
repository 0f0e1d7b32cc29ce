"""Synthetic galleries for the search tests: scenes with drawn people and one planted person.

Every person is a drawn figure (head, torso, legs) in plain clothing colours; the planted person
wears magenta/yellow horizontal stripes and cyan trousers, colours nobody else wears. Images are
PNG, so pixels (and hence features) are exactly reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SCENE_SIZE = (240, 180)  # width, height
# Plain clothing colours, far in hue from the planted person's magenta / yellow / cyan.
PLAIN_COLOURS = np.array(
    [
        [150, 30, 30],
        [30, 110, 40],
        [40, 50, 140],
        [110, 80, 50],
        [90, 90, 90],
        [20, 20, 20],
        [200, 200, 200],
        [170, 90, 20],
        [60, 30, 90],
        [30, 70, 70],
    ],
    dtype=np.uint8,
)
SKIN = np.array([200, 160, 130], dtype=np.uint8)


@dataclass(frozen=True)
class SceneImage:
    path: Path
    boxes: np.ndarray  #: N x 4 float32 x1 y1 x2 y2 of every person
    planted: int | None  #: index into boxes of the planted person, if present


def draw_person(width: int, height: int, rng: np.random.Generator, planted: bool) -> np.ndarray:
    """An H x W x 3 figure: head, torso (striped when planted), legs."""
    person = np.empty((height, width, 3), dtype=np.uint8)
    head, torso = height // 6, height // 6 + int(height * 0.4)
    person[:head] = SKIN
    if planted:
        stripe = max(2, height // 24)
        rows = (np.arange(torso - head) // stripe) % 2 == 0
        person[head:torso] = np.where(rows[:, None, None], [220, 30, 200], [240, 220, 30])
        person[torso:] = [40, 210, 220]
    else:
        shirt, trousers = PLAIN_COLOURS[rng.choice(len(PLAIN_COLOURS), 2, replace=False)]
        person[head:torso] = shirt
        person[torso:] = trousers
    noise = rng.integers(-12, 13, size=person.shape)
    return np.clip(person.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_scene(
    rng: np.random.Generator, n_people: int, with_planted: bool
) -> tuple[np.ndarray, np.ndarray, int | None]:
    width, height = SCENE_SIZE
    base = rng.integers(60, 140, size=3)
    scene = np.clip(base + rng.integers(-20, 21, size=(height, width, 3)), 0, 255).astype(np.uint8)
    boxes: list[list[float]] = []
    planted = rng.integers(n_people) if with_planted else None
    slot = width // max(n_people, 1)
    for i in range(n_people):
        h = int(rng.integers(70, 150))
        w = max(12, int(h * rng.uniform(0.35, 0.45)))
        w = min(w, slot - 2)
        x1 = i * slot + int(rng.integers(0, slot - w))
        y1 = int(rng.integers(0, height - h))
        scene[y1 : y1 + h, x1 : x1 + w] = draw_person(w, h, rng, planted == i)
        boxes.append([x1, y1, x1 + w, y1 + h])
    return scene, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), planted


def make_gallery(
    folder: Path, n_images: int = 10, seed: int = 0, planted_every: int = 3
) -> list[SceneImage]:
    """Write `n_images` scenes into `folder`; every `planted_every`-th one holds the planted person."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n_images):
        scene, boxes, planted = make_scene(rng, int(rng.integers(2, 5)), i % planted_every == 0)
        path = folder / f"c{1 + i % 2}s1_{i:06d}.png"
        Image.fromarray(scene).save(path)
        images.append(SceneImage(path, boxes, None if planted is None else int(planted)))
    return images


def make_probe(path: Path, seed: int = 99) -> np.ndarray:
    """Write a probe scene holding the planted person; return its box."""
    rng = np.random.default_rng(seed)
    scene, boxes, planted = make_scene(rng, 3, True)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene).save(path)
    return boxes[planted]
