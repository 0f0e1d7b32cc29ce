"""Drawing for the synthetic person-search world: people, backgrounds and clutter.

A person is drawn with PIL on a high-resolution canvas in body-height units and then resized
(antialiased) to the height the scene asks for, so a 40-pixel person really loses the patterns,
logos and accessories that a 300-pixel one shows.

The world poses the problem CLSA addresses (matching a person across very different scales):
- **Coarse colour does not identify anyone.** Each identity wears one of a few shared *coarse
  looks* (`COARSE_LOOKS`: shirt, trousers, skin, hair, jacket), so dozens of identities look the
  same at 40 pixels, and a colour or colour-layout descriptor cannot tell them apart.
- **Identity lives in mid-scale cues**: the shirt's pattern (type, period, a lighter or darker
  shade of the shirt, so it does not change the mean colour much), a chest logo (shape, colour),
  hat, bag, shoes, hair style, sleeves and body shape. They are readable at 100+ pixels tall and
  blur away below about 50 (see `capture_degradation` in `synthetic.py` for the camera effects
  that grow as a person gets smaller).
`Appearance` is what stays the same for one identity across scenes; `Pose` is what changes from
one sighting to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class CoarseLook:
    """What a person looks like from far away: shared by many identities."""

    shirt: RGB
    lower_colour: RGB
    lower: str  #: "trousers", "shorts" or "skirt"
    skin: RGB
    hair: RGB
    jacket: RGB | None = None


# Few, common looks: at low resolution every identity is one of these. Twelve looks for a few
# hundred identities leaves each look to dozens of them.
COARSE_LOOKS: tuple[CoarseLook, ...] = (
    CoarseLook((235, 235, 230), (30, 40, 80), "trousers", (235, 190, 150), (30, 22, 15)),
    CoarseLook((130, 130, 135), (25, 25, 30), "trousers", (200, 150, 110), (25, 18, 12)),
    CoarseLook((30, 45, 100), (65, 95, 145), "trousers", (200, 150, 110), (30, 22, 15)),
    CoarseLook((28, 28, 30), (28, 28, 32), "trousers", (160, 110, 75), (20, 15, 10)),
    CoarseLook((190, 40, 45), (60, 90, 140), "trousers", (235, 190, 150), (60, 40, 25)),
    CoarseLook((210, 190, 150), (100, 70, 45), "trousers", (235, 190, 150), (120, 80, 40)),
    CoarseLook((50, 120, 70), (115, 115, 120), "trousers", (200, 150, 110), (30, 22, 15)),
    CoarseLook((130, 175, 225), (110, 110, 115), "shorts", (235, 190, 150), (60, 40, 25)),
    CoarseLook((235, 235, 230), (30, 30, 35), "skirt", (235, 190, 150), (60, 40, 25)),
    CoarseLook(
        (130, 130, 135), (60, 90, 140), "trousers", (110, 75, 50), (20, 15, 10), jacket=(28, 28, 30)
    ),
    CoarseLook(
        (235, 235, 230),
        (30, 40, 80),
        "trousers",
        (200, 150, 110),
        (30, 22, 15),
        jacket=(30, 45, 100),
    ),
    CoarseLook((240, 200, 60), (30, 40, 80), "trousers", (160, 110, 75), (20, 15, 10)),
)

# Mid-scale cues: small parts of the body, so they barely move a region's mean colour.
SHIRT_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "diagonal")
LOGOS = ("none", "circle", "square", "triangle", "diamond", "cross")
LOGO_COLOURS: tuple[RGB, ...] = (
    (245, 245, 245),
    (20, 20, 20),
    (240, 200, 0),
    (200, 30, 35),
    (40, 140, 200),
)
HAIR_STYLES = ("short", "short", "long", "bald", "ponytail")
HATS = ("none", "none", "none", "cap", "beanie")
# muted: a hat or a bag is a shape to recognise up close, not a colour blob seen from afar
HAT_COLOURS: tuple[RGB, ...] = ((20, 20, 22), (95, 95, 100), (30, 45, 100), (110, 70, 40))
BAGS = ("none", "backpack", "shoulder", "hand")
BAG_COLOURS: tuple[RGB, ...] = ((25, 25, 25), (110, 70, 40), (100, 100, 105), (40, 55, 45))
SHOE_COLOURS: tuple[RGB, ...] = ((20, 20, 20), (240, 240, 240), (120, 70, 30), (200, 40, 40))


@dataclass(frozen=True)
class Appearance:
    """What one identity looks like in every scene it appears in."""

    skin: RGB
    hair: RGB
    hair_style: str
    hat: str
    hat_colour: RGB
    shirt: RGB
    shirt_pattern: str
    pattern_colour: RGB  #: the pattern's darker shade (see `pattern_shades`)
    pattern_period: float  #: stripe/check period in body heights
    logo: str
    logo_colour: RGB
    long_sleeves: bool
    jacket: RGB | None
    lower: str
    lower_colour: RGB
    shoes: RGB
    bag: str
    bag_colour: RGB
    bag_side: int  #: +1 right, -1 left (before mirroring)
    build: float  #: body width factor (height/width ratio of the silhouette)
    leg_ratio: float  #: hip height factor
    look: int = 0  #: index into COARSE_LOOKS


@dataclass(frozen=True)
class Pose:
    """What changes between two sightings of the same person."""

    back: bool  #: seen from behind: no face or logo, backpack visible
    mirror: bool
    squeeze: float  #: torso width factor (turned bodies look narrower)
    spread: float  #: extra distance between the feet, body heights
    stride: float  #: one foot raised/forward, body heights
    arm_left: float  #: degrees away from the body
    arm_right: float


def _pick(rng: np.random.Generator, options: tuple) -> object:
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 14) -> RGB:
    shift = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(colour) + shift, 0, 255))  # type: ignore[return-value]


def _shade(rng: np.random.Generator, colour: RGB) -> RGB:
    """The darker of a pattern's two shades; `pattern_shades` gives the lighter one."""
    return tuple(int(v) for v in np.asarray(colour, dtype=np.float64) * rng.uniform(0.55, 0.7))  # type: ignore[return-value]


def pattern_shades(app: Appearance) -> tuple[RGB, RGB]:
    """(dark, light) shades of a patterned shirt, averaging to about the shirt's own colour.

    Half the shirt takes each shade, so from far away (where the pattern blurs) the shirt has its
    coarse look's colour and the pattern tells nothing; up close its type and period do.
    """
    base = np.asarray(app.shirt, dtype=np.float64)
    light = np.clip(2 * base - np.asarray(app.pattern_colour, dtype=np.float64), 0, 255)
    return app.pattern_colour, tuple(int(v) for v in light)  # type: ignore[return-value]


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one identity: a shared coarse look, then its own mid-scale cues and body shape."""
    look_index = int(rng.integers(len(COARSE_LOOKS)))
    look = COARSE_LOOKS[look_index]
    shirt = _jitter(rng, look.shirt, 4)  # tiny: per-sighting lighting varies far more
    return Appearance(
        skin=_jitter(rng, look.skin, 4),
        hair=_jitter(rng, look.hair, 4),
        hair_style=_pick(rng, HAIR_STYLES),
        hat=_pick(rng, HATS),
        hat_colour=_pick(rng, HAT_COLOURS),
        shirt=shirt,
        shirt_pattern=_pick(rng, SHIRT_PATTERNS),
        pattern_colour=_shade(rng, shirt),
        pattern_period=float(rng.uniform(0.035, 0.075)),
        logo=_pick(rng, LOGOS),
        logo_colour=_pick(rng, LOGO_COLOURS),
        long_sleeves=bool(rng.random() < 0.5),
        jacket=_jitter(rng, look.jacket, 4) if look.jacket is not None else None,
        lower=look.lower,
        lower_colour=_jitter(rng, look.lower_colour, 4),
        shoes=_pick(rng, SHOE_COLOURS),
        bag=_pick(rng, BAGS),
        bag_colour=_pick(rng, BAG_COLOURS),
        bag_side=1 if rng.random() < 0.5 else -1,
        build=float(rng.uniform(0.85, 1.2)),
        leg_ratio=float(rng.uniform(0.96, 1.04)),
        look=look_index,
    )


def sample_pose(rng: np.random.Generator) -> Pose:
    """Draw a view and stance for one sighting."""
    walking = rng.random() < 0.5
    return Pose(
        back=bool(rng.random() < 0.3),
        mirror=bool(rng.random() < 0.5),
        squeeze=float(rng.uniform(0.78, 1.0)),
        spread=float(rng.uniform(0.02, 0.07) if walking else rng.uniform(0.0, 0.02)),
        stride=float(rng.uniform(0.0, 0.03) if walking else 0.0),
        arm_left=float(rng.uniform(4, 28)),
        arm_right=float(rng.uniform(4, 28)),
    )


class _BodyCanvas:
    """An RGBA canvas addressed in body-height units, x centred on the body's axis."""

    def __init__(self, height: int) -> None:
        self.unit = height * 0.95
        self.top = height * 0.025
        self.width = int(round(height * 0.62))
        self.cx = self.width / 2
        self.image = Image.new("RGBA", (self.width, height), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.mask = Image.new("L", (self.width, height), 0)  # the shirt region, for its pattern
        self.mask_draw = ImageDraw.Draw(self.mask)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.unit, self.top + y * self.unit)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        a, b = self.p(x0, y0)
        c, d = self.p(x1, y1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def px(self, length: float) -> int:
        return max(1, int(round(length * self.unit)))

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, fill: RGB, shirt: bool = False
    ) -> None:
        self.draw.ellipse(self.box(cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
        if shirt:
            self.mask_draw.ellipse(self.box(cx - rx, cy - ry, cx + rx, cy + ry), fill=255)

    def polygon(self, points: list[tuple[float, float]], fill: RGB, shirt: bool = False) -> None:
        pts = [self.p(x, y) for x, y in points]
        self.draw.polygon(pts, fill=fill)
        if shirt:
            self.mask_draw.polygon(pts, fill=255)

    def line(
        self, points: list[tuple[float, float]], fill: RGB, width: float, shirt: bool = False
    ) -> None:
        pts = [self.p(x, y) for x, y in points]
        self.draw.line(pts, fill=fill, width=self.px(width), joint="curve")
        for x, y in points:  # round the ends
            self.ellipse(x, y, width / 2, width / 2, fill, shirt)
        if shirt:
            self.mask_draw.line(pts, fill=255, width=self.px(width), joint="curve")

    def apply_pattern(self, app: Appearance, squeeze: float) -> None:
        """Paint the shirt pattern through the shirt mask (vectorised, no pixel loops)."""
        if app.shirt_pattern == "plain":
            return
        h, w = self.mask.size[1], self.mask.size[0]
        ys = (np.arange(h, dtype=np.float32) - self.top) / self.unit
        xs = (np.arange(w, dtype=np.float32) - self.cx) / (self.unit * squeeze)
        period = app.pattern_period
        if app.shirt_pattern == "hstripes":
            on = np.broadcast_to((ys[:, None] // (period / 2)) % 2 == 0, (h, w))
        elif app.shirt_pattern == "vstripes":
            on = np.broadcast_to((xs[None, :] // (period / 2)) % 2 == 0, (h, w))
        elif app.shirt_pattern == "checks":
            on = ((ys[:, None] // period) + (xs[None, :] // period)) % 2 == 0
        else:  # diagonal stripes
            on = ((ys[:, None] + xs[None, :]) // (period / 2)) % 2 == 0
        shirt = np.asarray(self.mask) > 0
        dark, light = pattern_shades(app)
        self.image.paste(light, (0, 0, w, h), Image.fromarray(shirt & ~on).convert("L"))
        self.image.paste(dark, (0, 0, w, h), Image.fromarray(shirt & on).convert("L"))


Point = tuple[float, float]
Arm = tuple[Point, Point, Point]  #: shoulder, elbow, hand


@dataclass(frozen=True)
class _Body:
    """One drawing's body measures, in body heights: the build narrowed by the pose."""

    bw: float  #: width factor
    hip_y: float
    shoulder_x: float
    hip_x: float
    leg_w: float
    arm_w: float

    @classmethod
    def of(cls, app: Appearance, pose: Pose) -> _Body:
        bw = app.build * pose.squeeze
        return cls(
            bw=bw,
            hip_y=0.49 * app.leg_ratio,
            shoulder_x=0.105 * bw,
            hip_x=0.09 * bw,
            leg_w=0.07 * math.sqrt(bw),
            arm_w=0.042 * math.sqrt(bw),
        )


def render_person(app: Appearance, pose: Pose, height: int) -> Image.Image:
    """Draw one person and return an RGBA patch exactly `height` pixels tall, tightly cropped.

    The parts are painted back to front, in this order (later ones cover earlier ones)."""
    canvas_height = int(np.clip(round(1.6 * height), 180, 640))
    c = _BodyCanvas(canvas_height)
    body = _Body.of(app, pose)
    front = not pose.back

    # long hair hangs behind the shoulders in a front view
    if front and app.hair_style == "long" and app.hat != "beanie":
        c.polygon([(-0.058, 0.06), (0.058, 0.06), (0.066, 0.23), (-0.066, 0.23)], app.hair)
    _draw_legs(c, app, pose, body)
    arms = _arm_joints(pose, body)
    _draw_shirt(c, app, pose, body, arms)
    if app.jacket is not None:
        _draw_jacket(c, app.jacket, pose, body, arms)
    if app.lower == "skirt":
        c.polygon(
            [
                (-0.085 * body.bw, body.hip_y - 0.08),
                (0.085 * body.bw, body.hip_y - 0.08),
                (body.hip_x + 0.05, 0.68),
                (-body.hip_x - 0.05, 0.68),
            ],
            app.lower_colour,
        )
    _draw_forearms(c, app, body, arms)
    _draw_bag(c, app, pose, arms, body.bw)
    _draw_head(c, app, front)
    return _crop_to_height(c.image, height, pose.mirror)


def _draw_legs(c: _BodyCanvas, app: Appearance, pose: Pose, body: _Body) -> None:
    """Legs and shoes, and the trousers or shorts over them; in a stride one foot is lifted and
    brought forward."""
    lower = app.lower_colour
    for side in (-1, 1):
        lift = pose.stride if side == 1 else 0.0
        ankle = (side * (0.045 * body.bw + pose.spread / 2), 0.935 - lift)
        hip = (side * 0.045 * body.bw, body.hip_y)
        knee = ((hip[0] + ankle[0]) / 2, (hip[1] + ankle[1]) / 2)
        trouser_end = {"trousers": ankle, "shorts": knee, "skirt": hip}[app.lower]
        c.line([hip, knee, ankle], app.skin, body.leg_w * 0.85)
        if app.lower != "skirt":
            c.line([hip, trouser_end], lower, body.leg_w)
        c.ellipse(ankle[0] + side * 0.01, ankle[1] + 0.03, 0.04, 0.022, app.shoes)
    if app.lower != "skirt":
        hip_x, hip_y = body.hip_x, body.hip_y
        c.polygon(
            [
                (-hip_x, hip_y - 0.06),
                (hip_x, hip_y - 0.06),
                (hip_x * 0.6, hip_y + 0.06),
                (-hip_x * 0.6, hip_y + 0.06),
            ],
            lower,
        )


def _arm_joints(pose: Pose, body: _Body) -> list[Arm]:
    """Left and right arm: shoulder, elbow and hand, the forearm bent less than the upper arm."""
    arms = []
    for side, angle in ((-1, pose.arm_left), (1, pose.arm_right)):
        a = math.radians(angle)
        shoulder = (side * (body.shoulder_x - 0.012), 0.175)
        elbow = (shoulder[0] + side * 0.16 * math.sin(a), shoulder[1] + 0.16 * math.cos(a))
        b = a * 0.6
        hand = (elbow[0] + side * 0.15 * math.sin(b), elbow[1] + 0.15 * math.cos(b))
        arms.append((shoulder, elbow, hand))
    return arms


def _draw_shirt(c: _BodyCanvas, app: Appearance, pose: Pose, body: _Body, arms: list[Arm]) -> None:
    """Torso and sleeves, which share the shirt mask so the pattern covers both; the logo."""
    shoulder_x, hip_x, hip_y, bw = body.shoulder_x, body.hip_x, body.hip_y, body.bw
    torso = [
        (-shoulder_x, 0.155),
        (shoulder_x, 0.155),
        (0.085 * bw, 0.33),
        (hip_x, hip_y),
        (-hip_x, hip_y),
        (-0.085 * bw, 0.33),
    ]
    c.polygon(torso, app.shirt, shirt=True)
    for shoulder, elbow, _ in arms:
        c.line([shoulder, elbow], app.shirt, body.arm_w, shirt=True)
        c.ellipse(shoulder[0], shoulder[1] + 0.005, 0.03 * bw, 0.025, app.shirt, shirt=True)
    c.apply_pattern(app, pose.squeeze)
    if not pose.back and app.logo != "none" and app.jacket is None:
        _draw_logo(c, app.logo, app.logo_colour)


def _draw_jacket(c: _BodyCanvas, colour: RGB, pose: Pose, body: _Body, arms: list[Arm]) -> None:
    """A jacket over the shirt: its two halves and upper sleeves."""
    inner = 0.0 if pose.back else 0.035 * body.bw  # open at the front, closed at the back
    for side in (-1, 1):
        c.polygon(
            [
                (side * inner, 0.16),
                (side * body.shoulder_x, 0.155),
                (side * 0.085 * body.bw, 0.33),
                (side * body.hip_x, body.hip_y + 0.01),
                (side * inner, body.hip_y + 0.01),
            ],
            colour,
        )
    for shoulder, elbow, _ in arms:
        c.line([shoulder, elbow], colour, body.arm_w * 1.08)


def _draw_forearms(c: _BodyCanvas, app: Appearance, body: _Body, arms: list[Arm]) -> None:
    """Forearms (sleeved or bare) and hands."""
    sleeve_colour = app.jacket if app.jacket is not None else app.shirt
    long = app.long_sleeves or app.jacket is not None
    for _, elbow, hand in arms:
        c.line([elbow, hand], sleeve_colour if long else app.skin, body.arm_w * 0.92)
        c.ellipse(hand[0], hand[1] + 0.01, 0.022, 0.025, app.skin)


def _draw_head(c: _BodyCanvas, app: Appearance, front: bool) -> None:
    """Neck, head, hair, face and hat."""
    c.polygon([(-0.022, 0.1), (0.022, 0.1), (0.024, 0.165), (-0.024, 0.165)], app.skin)
    c.ellipse(0.0, 0.07, 0.047, 0.06, app.skin)
    if app.hair_style != "bald":
        _draw_hair(c, app, front)
    if front:
        for side in (-1, 1):
            c.ellipse(side * 0.018, 0.068, 0.007, 0.005, (30, 25, 25))
        c.line([(-0.012, 0.1), (0.012, 0.1)], (150, 60, 60), 0.005)
    if app.hat == "cap":
        c.draw.chord(c.box(-0.054, -0.006, 0.054, 0.09), 180, 360, fill=app.hat_colour)
        if front:
            c.ellipse(0.0, 0.043, 0.06, 0.009, app.hat_colour)
    elif app.hat == "beanie":
        c.draw.chord(c.box(-0.053, -0.012, 0.053, 0.11), 180, 360, fill=app.hat_colour)
        c.ellipse(0.0, 0.05, 0.053, 0.01, app.hat_colour)


def _draw_hair(c: _BodyCanvas, app: Appearance, front: bool) -> None:
    """Hair on the head: a fringe seen from the front; from behind the back of the head, and
    long hair or a ponytail hanging down."""
    if front:
        c.draw.chord(c.box(-0.052, 0.002, 0.052, 0.1), 180, 360, fill=app.hair)
        return
    c.ellipse(0.0, 0.066, 0.05, 0.062, app.hair)
    if app.hair_style == "long":
        c.polygon([(-0.05, 0.07), (0.05, 0.07), (0.062, 0.23), (-0.062, 0.23)], app.hair)
    elif app.hair_style == "ponytail":
        c.ellipse(0.0, 0.14, 0.018, 0.045, app.hair)


def _crop_to_height(image: Image.Image, height: int, mirror: bool) -> Image.Image:
    """The drawn body (mirrored if asked), cropped to its pixels and resized `height` tall."""
    if mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bbox = image.getchannel("A").getbbox()
    assert bbox is not None  # the body is always drawn
    image = image.crop(bbox)
    width = max(4, int(round(image.width * height / image.height)))
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _draw_logo(c: _BodyCanvas, logo: str, colour: RGB) -> None:
    x, y, r = 0.0, 0.245, 0.032
    if logo == "circle":
        c.ellipse(x, y, r, r, colour)
    elif logo == "square":
        c.polygon([(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)], colour)
    elif logo == "triangle":
        c.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], colour)
    elif logo == "diamond":
        c.polygon([(x, y - r * 1.2), (x + r, y), (x, y + r * 1.2), (x - r, y)], colour)
    else:  # cross
        t = r * 0.35
        c.polygon([(x - t, y - r), (x + t, y - r), (x + t, y + r), (x - t, y + r)], colour)
        c.polygon([(x - r, y - t), (x + r, y - t), (x + r, y + t), (x - r, y + t)], colour)


def _draw_bag(c: _BodyCanvas, app: Appearance, pose: Pose, arms: list[Arm], bw: float) -> None:
    colour, side = app.bag_colour, app.bag_side
    if app.bag == "backpack":
        if pose.back:
            c.polygon(
                [(-0.08 * bw, 0.18), (0.08 * bw, 0.18), (0.085 * bw, 0.42), (-0.085 * bw, 0.42)],
                colour,
            )
            c.line([(-0.06 * bw, 0.33), (0.06 * bw, 0.33)], tuple(v // 2 for v in colour), 0.008)
        else:
            for s in (-1, 1):
                c.line([(s * 0.07 * bw, 0.16), (s * 0.065 * bw, 0.34)], colour, 0.014)
    elif app.bag == "shoulder":
        c.line([(-side * 0.08 * bw, 0.16), (side * 0.1 * bw, 0.44)], colour, 0.012)
        c.polygon(
            [
                (side * 0.08 * bw, 0.41),
                (side * 0.16 * bw, 0.41),
                (side * 0.16 * bw, 0.51),
                (side * 0.08 * bw, 0.51),
            ],
            colour,
        )
    elif app.bag == "hand":
        hand = arms[0 if side < 0 else 1][2]
        c.polygon(
            [
                (hand[0] - 0.035, hand[1] + 0.025),
                (hand[0] + 0.035, hand[1] + 0.025),
                (hand[0] + 0.04, hand[1] + 0.1),
                (hand[0] - 0.04, hand[1] + 0.1),
            ],
            colour,
        )


# --------------------------------------------------------------------------- backgrounds


def draw_background(rng: np.random.Generator, width: int, height: int, horizon: int) -> Image.Image:
    """Sky or wall above the horizon, buildings, a textured ground plane below it."""
    indoor = rng.random() < 0.3
    ys = np.arange(height, dtype=np.float32)[:, None, None]
    top = (
        rng.uniform(60, 230, 3)
        if indoor
        else np.array([rng.uniform(80, 160), rng.uniform(140, 200), 235.0])
    )
    mid = top * rng.uniform(0.75, 1.05)
    ground_a = rng.uniform(60, 170, 3)
    ground_b = ground_a * rng.uniform(0.6, 1.2)
    t_sky = np.clip(ys / max(horizon, 1), 0, 1)
    t_ground = np.clip((ys - horizon) / max(height - horizon, 1), 0, 1)
    sky = top + (mid - top) * t_sky
    ground = ground_a + (ground_b - ground_a) * t_ground
    rows = np.where(ys < horizon, sky, ground).astype(np.float32)  # H x 1 x 3
    # low-frequency texture: a coarse random grid upsampled smoothly
    coarse = rng.normal(0, 10, (max(2, height // 24), max(2, width // 24))).astype(np.float32)
    texture = np.asarray(
        Image.fromarray(coarse, "F").resize((width, height), Image.Resampling.BILINEAR)
    )
    pixels = texture[..., None] + rows
    np.clip(pixels, 0, 255, out=pixels)
    pixels = pixels.astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    _draw_buildings(rng, draw, width, horizon, indoor)
    _draw_ground_lines(rng, draw, width, height, horizon, ground_a)
    return image


def _draw_buildings(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, horizon: int, indoor: bool
) -> None:
    x = int(rng.integers(-width // 6, 0))
    while x < width:
        w = int(rng.uniform(0.12, 0.35) * width)
        h = int(rng.uniform(0.3, 1.0) * horizon) if not indoor else horizon
        colour = tuple(int(v) for v in rng.uniform(70, 210, 3))
        if indoor and rng.random() < 0.5:  # indoor walls are mostly continuous
            x += w
            continue
        draw.rectangle([x, horizon - h, x + w, horizon], fill=colour)
        window = tuple(int(v * 0.55) for v in colour) if rng.random() < 0.5 else (190, 215, 235)
        step = max(6, int(w * rng.uniform(0.12, 0.25)))
        size = max(2, int(step * 0.55))
        for wy in range(horizon - h + step // 2, horizon - size - 2, step):
            for wx in range(x + step // 3, x + w - size, step):
                draw.rectangle([wx, wy, wx + size, wy + size], fill=window)
        x += w + int(rng.integers(0, max(1, width // 10)))


def _draw_ground_lines(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    width: int,
    height: int,
    horizon: int,
    ground: np.ndarray,
) -> None:
    vanish = rng.uniform(0.2, 0.8) * width
    line = tuple(int(v) for v in np.clip(ground * rng.uniform(0.6, 1.4), 0, 255))
    for _ in range(int(rng.integers(2, 7))):
        end = rng.uniform(-width, 2 * width)
        draw.line([(vanish, horizon), (end, height)], fill=line, width=max(1, height // 200))
    if rng.random() < 0.5:  # tiles: horizontal lines denser toward the horizon
        for k in range(1, 12):
            y = horizon + (height - horizon) * (k / 12) ** 2
            draw.line([(0, y), (width, y)], fill=line, width=1)


# --------------------------------------------------------------------------- clutter

CLUTTER_KINDS = ("pole", "crate", "car", "bin", "bench", "tree", "cone")


def clutter_extent(kind: str, person_height: float) -> tuple[float, float]:
    """(width, height) of a clutter object standing where a person would be that tall."""
    w, h = {
        "pole": (0.08, 2.2),
        "crate": (0.5, 0.4),
        "car": (2.1, 0.75),
        "bin": (0.3, 0.5),
        "bench": (0.9, 0.45),
        "tree": (0.8, 2.5),
        "cone": (0.2, 0.35),
    }[kind]
    return w * person_height, h * person_height


def draw_clutter(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int]
) -> None:
    """Draw one non-person object filling `box` (x1, y1, x2, y2); it is never annotated."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    colour = tuple(int(v) for v in rng.uniform(30, 230, 3))
    dark = tuple(v // 3 for v in colour)
    if kind == "pole":
        draw.rectangle(box, fill=(70, 70, 75))
        draw.rectangle([x1 - w, y1, x2 + w, y1 + max(2, h // 12)], fill=colour)
    elif kind == "crate":
        draw.rectangle(box, fill=(150, 110, 60), outline=(90, 60, 30), width=max(1, w // 12))
        draw.line([(x1, y1), (x2, y2)], fill=(90, 60, 30), width=max(1, w // 15))
    elif kind == "car":
        body_top = y1 + int(h * 0.4)
        draw.rounded_rectangle([x1, body_top, x2, y2 - h // 8], radius=max(1, h // 6), fill=colour)
        draw.polygon(
            [
                (x1 + w * 0.2, body_top),
                (x1 + w * 0.32, y1),
                (x1 + w * 0.7, y1),
                (x1 + w * 0.82, body_top),
            ],
            fill=colour,
        )
        draw.polygon(
            [
                (x1 + w * 0.26, body_top),
                (x1 + w * 0.35, y1 + h * 0.08),
                (x1 + w * 0.67, y1 + h * 0.08),
                (x1 + w * 0.76, body_top),
            ],
            fill=(60, 80, 100),
        )
        r = h // 5
        for cx in (x1 + w * 0.22, x1 + w * 0.78):
            draw.ellipse([cx - r, y2 - 2 * r, cx + r, y2], fill=(20, 20, 20))
    elif kind == "bin":
        draw.rectangle([x1, y1 + h // 8, x2, y2], fill=colour)
        draw.rectangle([x1 - w // 10, y1, x2 + w // 10, y1 + h // 8], fill=dark)
    elif kind == "bench":
        seat = y1 + h // 2
        draw.rectangle([x1, y1, x2, y1 + h // 6], fill=colour)
        draw.rectangle([x1, seat, x2, seat + h // 6], fill=colour)
        for lx in (x1 + w // 10, x2 - w // 10):
            draw.line([(lx, seat), (lx, y2)], fill=dark, width=max(1, w // 30))
    elif kind == "tree":
        trunk = max(2, w // 8)
        cx = (x1 + x2) // 2
        draw.rectangle([cx - trunk // 2, y1 + h // 2, cx + trunk // 2, y2], fill=(90, 60, 35))
        green = (int(rng.integers(20, 80)), int(rng.integers(90, 160)), int(rng.integers(20, 70)))
        draw.ellipse([x1, y1, x2, y1 + int(h * 0.62)], fill=green)
    else:  # cone
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=(240, 110, 20))
        draw.line(
            [(x1 + w * 0.3, y1 + h * 0.55), (x2 - w * 0.3, y1 + h * 0.55)],
            fill=(250, 250, 250),
            width=max(1, h // 10),
        )
