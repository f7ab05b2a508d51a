"""A harder, photo-like synthetic dataset in the VOC layout, for checking BoxSup on data it was not tuned on.

The demo set (``boxsup.data.synth``) paints convex-ish shapes with procedural textures and tight
boxes on the visible pixels. This one is closer to real box supervision:

* Backgrounds and object textures are random crops of the photographs bundled with scikit-image
  (only files shipped inside the wheel: nothing is downloaded), at random scales, flipped and
  colour-jittered per image; grey photographs are tinted.
* Each class has a characteristic shape family *and* texture source, both varied per instance:
  ``animal`` (body, head, legs and tail from ellipses and thick strokes; cat fur), ``moon``
  (crescents; the moon), ``ring`` (annuli, some broken; coins), ``bracket`` (L and U shapes; brick),
  ``star`` (star polygons with 4-7 points; stained tissue), ``signpost`` (a sign on a thin pole;
  the rocket photograph). Every silhouette gets a random rotation, flip and smooth elastic warp.
  ``classes`` draws only a subset of them (fewer classes: a task the small CPU network recognises
  better, so that label quality, not recognition, bounds the val score).
* Unlabelled distractors (smooth radial-noise blobs and thick curved strokes), some textured like
  a class, sit on the background; objects and distractors cast soft shadows, objects are shaded
  and their borders blurred, the whole image gets a light gradient, vignette, blur and noise.
* 1-3 objects per image, later ones on top. A box is the extent of its whole object, occluded
  parts included, as an annotator draws it; the mask holds the visible part. Objects fill
  30-80% of their boxes (about 0.45 on average), and every object keeps at least 40% of itself
  visible.
* The mask has VOC's void label (255) in a band along every object border (2 px across straight
  edges, about 3 across diagonal ones), where the blurred image edge is ambiguous.
* Images are ``size`` px high and ``size * U(0.75, 1.33)`` px wide; sizes 128-320 are the
  intended range (at least MIN_SIZE).

Image ``i`` of seed ``s`` depends only on ``(s, i, size)`` and the installed scikit-image photos:
the same seed writes byte-identical files.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from boxsup.data.annotations import BACKGROUND, IGNORE
from boxsup.data.synth import SynthSample, smooth_noise, tight_box, visible_instances, write_synthetic_dataset

PHOTO_CLASSES: tuple[str, ...] = ("animal", "moon", "ring", "bracket", "star", "signpost")

MIN_SIZE = 96  # below this the thin parts (poles, legs, tails) vanish into the void bands
MIN_VISIBLE_OWN = 0.4  # fraction of its own area an object must keep visible under later ones
MIN_CORE_PIXELS = 24  # visible, non-void pixels every object must keep, so its class is in the mask
FILL_RANGE = (0.3, 0.8)  # object area over box area; silhouettes outside are redrawn
MIN_STROKE_PX = 4.0  # thinnest stroke (poles, legs, tails) in pixels: thinner ones would be all void
_SHADOW_BLUR = (1.5, 3.0)  # sigma (px) of the soft shadows' edges
_STREAM = 0x70686F74  # "phot": keeps this generator's random streams apart from the demo's


# ---------------------------------------------------------------- photographs


@dataclass(frozen=True)
class _Source:
    """A bundled photograph: how to load it, whether it is grey (then tinted) and may be turned upside down."""

    load: Callable[[], np.ndarray]
    grey: bool = False
    any_orientation: bool = False


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


# Only photographs shipped inside the scikit-image wheel: the others need pooch and a download.
SOURCES: dict[str, _Source] = {
    "astronaut": _Source(_skimage("astronaut")),
    "brick": _Source(_skimage("brick"), grey=True, any_orientation=True),
    "camera": _Source(_skimage("camera"), grey=True),
    "chelsea": _Source(_skimage("chelsea")),
    "coffee": _Source(_skimage("coffee")),
    "coins": _Source(_skimage("coins"), grey=True, any_orientation=True),
    "grass": _Source(_skimage("grass"), grey=True, any_orientation=True),
    "gravel": _Source(_skimage("gravel"), grey=True, any_orientation=True),
    "hubble_deep_field": _Source(_skimage("hubble_deep_field"), any_orientation=True),
    "immunohistochemistry": _Source(_skimage("immunohistochemistry"), any_orientation=True),
    "moon": _Source(_skimage("moon"), grey=True, any_orientation=True),
    "motorcycle": _Source(_motorcycle),
    "retina": _Source(_skimage("retina"), any_orientation=True),
    "rocket": _Source(_skimage("rocket")),
}
BACKGROUND_SOURCES = ("astronaut", "camera", "coffee", "grass", "gravel", "hubble_deep_field", "motorcycle", "retina")
CLASS_SOURCES = ("chelsea", "moon", "coins", "brick", "immunohistochemistry", "rocket")  # aligned with PHOTO_CLASSES
# Hue (degrees) and saturation ranges that tint a grey photograph: per class, and for backgrounds.
CLASS_TINTS = {"moon": ((35, 60), (0.05, 0.3)), "coins": ((25, 50), (0.25, 0.6)), "brick": ((0, 25), (0.35, 0.65))}
BACKGROUND_TINTS = {
    "grass": ((60, 130), (0.2, 0.55)),
    "gravel": ((0, 360), (0.0, 0.25)),
    "camera": ((0, 360), (0.0, 0.3)),
}
_ALL_TINTS = {**BACKGROUND_TINTS, **CLASS_TINTS}


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A bundled photograph as float32 RGB in [0, 255] (grey ones replicated to three channels)."""
    image = np.asarray(SOURCES[name].load())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3], dtype=np.float32)


def _crop(rng: np.random.Generator, name: str, h: int, w: int, zoom: tuple[float, float]) -> np.ndarray:
    """An h x w view of a photograph at a random place and scale (output px per source px), maybe flipped."""
    src = _photo(name)
    sh, sw = src.shape[:2]
    z = rng.uniform(*zoom)
    ch, cw = h / z, w / z
    shrink = max(1.0, ch / sh, cw / sw)  # the photograph is too small for this zoom: zoom in further
    ch, cw = max(2, min(sh, int(round(ch / shrink)))), max(2, min(sw, int(round(cw / shrink))))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
    patch = cv2.resize(src[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=interp)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if SOURCES[name].any_orientation and rng.random() < 0.5:
        patch = patch[::-1]
    return np.ascontiguousarray(patch)


def _hue_rotation(degrees: float) -> np.ndarray:
    """A 3x3 RGB matrix turning hues by ``degrees`` about the grey axis."""
    t = math.radians(degrees)
    c, s, k = math.cos(t), math.sin(t), 1 / math.sqrt(3)
    axis = np.full(3, k)
    cross = np.array([[0, -k, k], [k, 0, -k], [-k, k, 0]])
    return (c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)).astype(np.float32)


def _jitter(rng: np.random.Generator, patch: np.ndarray, hue: float) -> np.ndarray:
    """Colour jitter: hue turn up to ``hue`` degrees, saturation, contrast, brightness and white balance."""
    patch = patch @ _hue_rotation(rng.uniform(-hue, hue)).T
    grey = patch.mean(axis=2, keepdims=True)
    patch = grey + rng.uniform(0.7, 1.3) * (patch - grey)
    mean = float(grey.mean())
    patch = mean + rng.uniform(0.75, 1.25) * (patch - mean)
    return patch * (rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)


def _texture(rng: np.random.Generator, name: str, h: int, w: int, zoom: tuple[float, float], tints: dict) -> np.ndarray:
    """A jittered crop of photograph ``name``; grey photographs are tinted within ``tints[name]``."""
    patch = _crop(rng, name, h, w, zoom)
    if SOURCES[name].grey:
        (h0, h1), (s0, s1) = tints.get(name, ((0, 360), (0.0, 0.4)))
        tint = np.array(colorsys.hsv_to_rgb(rng.uniform(h0, h1) / 360 % 1, rng.uniform(s0, s1), 1.0), np.float32)
        patch = patch * (tint / tint.mean())
    return _jitter(rng, patch, 6.0 if SOURCES[name].grey else 15.0)


# ---------------------------------------------------------------- silhouettes


class _Pen:
    """Draws on a square canvas in shape units: the origin at the centre, one unit = ``unit`` px, y down.

    Coordinates go to OpenCV with 4 fractional bits and anti-aliasing, so silhouettes are sub-pixel
    accurate before they are thresholded.
    """

    SHIFT = 4

    def __init__(self, unit: float, extent: float = 1.6):
        self.unit = unit
        side = int(math.ceil(2 * extent * unit)) + 4
        self.canvas = np.zeros((side, side), np.uint8)
        self.centre = side / 2

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        k = 1 << self.SHIFT
        return int(round((self.centre + x * self.unit - 0.5) * k)), int(round((self.centre + y * self.unit - 0.5) * k))

    def ellipse(self, x: float, y: float, ax: float, ay: float, angle: float = 0.0, value: int = 255) -> None:
        axes = (int(round(ax * self.unit * (1 << self.SHIFT))), int(round(ay * self.unit * (1 << self.SHIFT))))
        cv2.ellipse(self.canvas, self._pt(x, y), axes, angle, 0, 360, value, -1, cv2.LINE_AA, self.SHIFT)

    def polygon(self, points: np.ndarray, value: int = 255) -> None:
        pts = np.array([self._pt(x, y) for x, y in points], np.int32)
        cv2.fillPoly(self.canvas, [pts], value, cv2.LINE_AA, self.SHIFT)

    def stroke(self, points: np.ndarray, width: float, value: int = 255) -> None:
        """A thick polyline ``width`` units wide (at least MIN_STROKE_PX), with round joints and caps."""
        px = max(MIN_STROKE_PX, width * self.unit)
        pts = np.array([self._pt(x, y) for x, y in points], np.int32)
        cv2.polylines(self.canvas, [pts], False, value, int(round(px)), cv2.LINE_AA, self.SHIFT)
        for x, y in (points[0], points[-1]):
            self.ellipse(x, y, px / 2 / self.unit, px / 2 / self.unit, value=value)


def _curve(
    rng: np.random.Generator, start: tuple[float, float], heading: float, length: float, bend: float
) -> np.ndarray:
    """Points of a smooth curve from ``start``: the heading (rad) turns by ``bend`` rad over ``length`` units."""
    steps = 10
    headings = heading + bend * np.linspace(0, 1, steps) ** rng.uniform(1, 2)
    xy = np.cumsum(np.stack([np.cos(headings), np.sin(headings)], 1) * length / steps, axis=0)
    return np.vstack([start, np.asarray(start) + xy])


def _animal(rng: np.random.Generator, pen: _Pen) -> None:
    """A quadruped facing right: body and head ellipses, neck, ears, four legs and a curved tail."""
    bl, bh = rng.uniform(0.5, 0.65), rng.uniform(0.28, 0.38)
    tilt = rng.uniform(-8, 8)
    pen.ellipse(0, 0, bl, bh, tilt)
    r = rng.uniform(0.15, 0.22)
    hx, hy = bl + r * rng.uniform(0.2, 0.7), -bh - r * rng.uniform(0.0, 0.7)
    pen.stroke(np.array([[bl * 0.6, -bh * 0.2], [hx, hy]]), 1.3 * r)
    pen.ellipse(hx, hy, r * rng.uniform(1.0, 1.35), r, rng.uniform(-20, 20))
    if rng.random() < 0.7:
        for dx in (-0.45, 0.35):
            ex = hx + dx * r
            tip = hy - r * rng.uniform(1.4, 1.9)
            pen.polygon(np.array([[ex - 0.3 * r, hy - 0.7 * r], [ex + 0.3 * r, hy - 0.7 * r], [ex, tip]]))
    leg_len, leg_w = rng.uniform(0.25, 0.45), rng.uniform(0.08, 0.12)
    for x in (-0.72, -0.5, 0.5, 0.72):
        top = np.array([x * bl, bh * 0.4])
        foot = top + [rng.uniform(-0.1, 0.1), bh * 0.6 + leg_len]
        knee = (top + foot) / 2 + [rng.uniform(-0.06, 0.06), 0]
        pen.stroke(np.vstack([top, knee, foot]), leg_w)
    heading = math.pi + rng.uniform(-0.9, 0.5)  # backwards, level to raised
    tail = _curve(rng, (-bl * 0.92, -bh * 0.3), heading, rng.uniform(0.2, 0.4), rng.uniform(-1.5, 1.5))
    pen.stroke(tail, rng.uniform(0.05, 0.08))


def _moon(rng: np.random.Generator, pen: _Pen) -> None:
    """A crescent: a disc with an offset disc cut out."""
    pen.ellipse(0, 0, 1.0, rng.uniform(0.85, 1.0))
    phi, d = rng.uniform(0, 2 * math.pi), rng.uniform(0.35, 0.6)
    r = rng.uniform(0.6, 0.85)
    pen.ellipse(d * math.cos(phi), d * math.sin(phi), r, r * rng.uniform(0.9, 1.05), value=0)


def _ring(rng: np.random.Generator, pen: _Pen) -> None:
    """An annulus (elliptic, the hole slightly off-centre), a third of them broken by a gap."""
    ay, inner = rng.uniform(0.65, 1.0), rng.uniform(0.45, 0.7)
    pen.ellipse(0, 0, 1.0, ay)
    dx, dy = rng.uniform(-0.06, 0.06, 2)
    pen.ellipse(dx, dy, inner, inner * ay * rng.uniform(0.9, 1.1), value=0)
    if rng.random() < 0.33:
        a, half = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(15, 35))
        ends = (a - half, a + half)
        pen.polygon(np.array([[0, 0], *([1.5 * math.cos(e), 1.5 * math.sin(e)] for e in ends)]), 0)


def _bracket(rng: np.random.Generator, pen: _Pen) -> None:
    """An L or a U: axis-aligned thick bars (the pose turns them later)."""
    w, h, t = rng.uniform(1.1, 1.7), rng.uniform(1.1, 1.7), rng.uniform(0.3, 0.45)
    x0, y0, x1, y1 = -w / 2, -h / 2, w / 2, h / 2

    def bar(a: float, b: float, c: float, d: float) -> None:
        pen.polygon(np.array([[a, b], [c, b], [c, d], [a, d]]))

    bar(x0, y0, x0 + t, y1)  # left upright
    bar(x0, y1 - t, x1, y1)  # foot
    if rng.random() < 0.5:
        bar(x1 - t, y0 + rng.uniform(0, 0.4) * h, x1, y1)  # right upright: a U


def _star(rng: np.random.Generator, pen: _Pen) -> None:
    """A star polygon with 4-7 points, random depth and slightly uneven arms."""
    n = int(rng.integers(4, 8))
    inner = rng.uniform(0.4, 0.6)
    angles = np.arange(2 * n) * math.pi / n + rng.uniform(-0.08, 0.08, 2 * n)
    radii = np.where(np.arange(2 * n) % 2 == 0, rng.uniform(0.9, 1.05, 2 * n), inner * rng.uniform(0.9, 1.1, 2 * n))
    pen.polygon(np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1))


def _signpost(rng: np.random.Generator, pen: _Pen) -> None:
    """A sign (board, disc, diamond, triangle or arrow) on a thin, slightly bent pole; sometimes two signs."""
    top = rng.uniform(-1.0, -0.8)
    signs = 1 if rng.random() < 0.7 else 2
    cursor = top  # signs stack down the pole from its top
    for _ in range(signs):
        w, h = rng.uniform(0.6, 0.85), rng.uniform(0.5, 0.7) / signs**0.5  # two smaller signs leave pole showing
        kind = int(rng.integers(5))
        half = (h / 2, 0.8 * h, 0.8 * h, 0.65 * h, h / 2)[kind]
        cy, cursor = cursor + half, cursor + 2 * half + 0.08
        if kind == 0:
            pen.polygon(np.array([[-w, cy - h / 2], [w, cy - h / 2], [w, cy + h / 2], [-w, cy + h / 2]]))
        elif kind == 1:
            pen.ellipse(0, cy, half, half)
        elif kind == 2:
            pen.polygon(np.array([[0, cy - half], [half, cy], [0, cy + half], [-half, cy]]))
        elif kind == 3:
            pen.polygon(np.array([[0, cy - half], [1.3 * half, cy + half], [-1.3 * half, cy + half]]))
        else:
            arrow = [[-w, cy - h / 2], [w * 0.6, cy - h / 2], [w, cy], [w * 0.6, cy + h / 2], [-w, cy + h / 2]]
            pen.polygon(np.array(arrow))
    bottom = max(rng.uniform(0.5, 0.85), cursor + rng.uniform(0.3, 0.5))  # the pole shows below the signs
    pole = [[0, top + 0.2], [rng.uniform(-0.05, 0.05), (top + bottom) / 2], [rng.uniform(-0.08, 0.08), bottom]]
    pen.stroke(np.array(pole), rng.uniform(0.06, 0.1))


SHAPES = (_animal, _moon, _ring, _bracket, _star, _signpost)  # aligned with PHOTO_CLASSES
UPRIGHT = (True, False, False, False, False, True)  # animals and signposts only lean a little


def _pose(rng: np.random.Generator, pen: _Pen, upright: bool) -> np.ndarray:
    """The drawn canvas rotated, maybe mirrored and smoothly warped, thresholded and cropped to its extent."""
    side = pen.canvas.shape[0]
    if upright:
        angle = rng.uniform(-15, 15)
    elif rng.random() < 0.5:
        angle = 90 * int(rng.integers(4)) + rng.uniform(-25, 25)  # L/U shapes mostly near axis-aligned
    else:
        angle = rng.uniform(0, 360)
    t = math.radians(angle)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    ys, xs = np.indices((side, side), np.float32) - (side - 1) / 2
    amp = rng.uniform(0.02, 0.06) * pen.unit
    cells = int(rng.integers(2, 4))
    map_x = mirror * (math.cos(t) * xs + math.sin(t) * ys) + amp * smooth_noise(rng, (side, side), cells)
    map_y = -math.sin(t) * xs + math.cos(t) * ys + amp * smooth_noise(rng, (side, side), cells)
    c = (side - 1) / 2
    warped = cv2.remap(pen.canvas, map_x + c, map_y + c, cv2.INTER_LINEAR, borderValue=0)
    silhouette = warped >= 128
    ys_, xs_ = np.nonzero(silhouette)
    if ys_.size == 0:
        return silhouette[:0, :0]
    return silhouette[ys_.min() : ys_.max() + 1, xs_.min() : xs_.max() + 1]


def _silhouette(rng: np.random.Generator, kind: int, extent: float, max_hw: tuple[int, int]) -> np.ndarray:
    """A silhouette of PHOTO_CLASSES[kind - 1] about ``extent`` px across, cropped to its box, fitting in ``max_hw``.

    Redrawn until it fills FILL_RANGE of its box; shrunk if it would not fit in the image.
    """
    while True:
        pen = _Pen(extent / 2)
        SHAPES[kind - 1](rng, pen)
        shape = _pose(rng, pen, UPRIGHT[kind - 1])
        if shape.size == 0:
            continue
        scale = min(1.0, max_hw[0] / shape.shape[0], max_hw[1] / shape.shape[1])
        if scale < 1.0:
            extent *= scale * 0.98
            continue
        if FILL_RANGE[0] <= shape.mean() <= FILL_RANGE[1]:
            return shape


def _blob(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A smooth random blob (low-frequency radial noise) ``radius`` px across, as a polygon's points."""
    theta = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 5):
        r += rng.uniform(0, 0.3 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    return np.stack([r * np.cos(theta), r * rng.uniform(0.5, 1.0) * np.sin(theta)], 1) * radius


# ---------------------------------------------------------------- composition


@dataclass(frozen=True)
class PhotoSample(SynthSample):
    """A rendered photo-style image, plus each object's whole silhouette.

    ``silhouettes[k]`` is object k's whole shape, occluded parts included, and its extent is
    ``boxes[k]``; ``instances`` and ``mask`` hold what is visible, and the mask has IGNORE (255)
    along every object border.
    """

    silhouettes: list[np.ndarray]


def void_band(instances: np.ndarray) -> np.ndarray:
    """Pixels next to a different instance (3x3 neighbourhood): a 2-3 px band along every object border."""
    ids = (instances.astype(np.int32) + 1).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(ids, kernel) != cv2.erode(ids, kernel)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A jittered crop of a background photograph, sometimes defocused, sometimes blended with a second one."""
    image = _texture(rng, str(rng.choice(BACKGROUND_SOURCES)), h, w, (0.3, 1.2), BACKGROUND_TINTS)
    if rng.random() < 0.3:
        other = _texture(rng, str(rng.choice(BACKGROUND_SOURCES)), h, w, (0.3, 1.2), BACKGROUND_TINTS)
        image = image * 0.7 + other * 0.3
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    return image


def _composite(
    rng: np.random.Generator,
    image: np.ndarray,
    shape: np.ndarray,
    y0: int,
    x0: int,
    layer: Callable[[int, int], np.ndarray],
    light: float,
) -> None:
    """Paint ``layer(h, w)`` through ``shape`` placed at (y0, x0), with a soft shadow and blurred edges, in place."""
    h, w = image.shape[:2]
    sh, sw = shape.shape
    sigma = rng.uniform(0.5, 1.1)
    pad = int(math.ceil(3 * sigma)) + 1
    shadow_len = rng.uniform(0.02, 0.06) * min(h, w) * (rng.random() < 0.75)
    dy, dx = int(round(shadow_len * math.sin(light))), int(round(shadow_len * math.cos(light)))
    spad = pad + int(math.ceil(3 * _SHADOW_BLUR[1])) + max(abs(dx), abs(dy))
    # Region (with room for the blurred edge and the shadow) clipped to the image.
    ry0, rx0, ry1, rx1 = max(0, y0 - spad), max(0, x0 - spad), min(h, y0 + sh + spad), min(w, x0 + sw + spad)
    local = np.zeros((ry1 - ry0, rx1 - rx0), np.float32)
    local[y0 - ry0 : y0 - ry0 + sh, x0 - rx0 : x0 - rx0 + sw] = shape
    region = image[ry0:ry1, rx0:rx1]
    if shadow_len > 0:
        shifted = np.zeros_like(local)
        src = local[max(0, -dy) : local.shape[0] - max(0, dy), max(0, -dx) : local.shape[1] - max(0, dx)]
        shifted[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
        shade = cv2.GaussianBlur(shifted, (0, 0), rng.uniform(*_SHADOW_BLUR))
        region *= (1 - rng.uniform(0.25, 0.5) * shade)[..., None]
    alpha = cv2.GaussianBlur(local, (0, 0), sigma)[..., None]
    paint = layer(ry1 - ry0, rx1 - rx0)
    # Rounded look: darker towards the rim and along the light's direction.
    inside = cv2.distanceTransform((local > 0).astype(np.uint8), cv2.DIST_L2, 3)
    rim = rng.uniform(0.1, 0.3) * np.exp(-inside / max(1.5, 0.08 * max(sh, sw)))
    yy, xx = np.indices(local.shape, np.float32)
    grad = (math.cos(light) * (xx - xx.mean()) + math.sin(light) * (yy - yy.mean())) / max(sh, sw)
    paint *= ((1 - rim) * (1 - rng.uniform(0.1, 0.35) * grad))[..., None]
    region[:] = alpha * paint + (1 - alpha) * region


def _place(
    rng: np.random.Generator, shape: np.ndarray, h: int, w: int, near: tuple[int, int, int, int] | None
) -> tuple[int, int]:
    """Top-left corner for ``shape``: anywhere in the image, or overlapping the box ``near`` (y0, x0, y1, x1)."""
    sh, sw = shape.shape
    if near is None:
        return int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    cy = (near[0] + near[2]) / 2 + rng.uniform(-0.6, 0.6) * (near[2] - near[0] + sh) / 2
    cx = (near[1] + near[3]) / 2 + rng.uniform(-0.6, 0.6) * (near[3] - near[1] + sw) / 2
    return int(np.clip(round(cy - sh / 2), 0, h - sh)), int(np.clip(round(cx - sw / 2), 0, w - sw))


def _layout(
    rng: np.random.Generator, h: int, w: int, kinds: tuple[int, ...]
) -> tuple[list[np.ndarray], list[tuple[int, int]], list[int]]:
    """Silhouettes, corners and labels of 1-3 objects that each stay at least MIN_VISIBLE_OWN visible.

    ``kinds[label - 1]`` is the PHOTO_CLASSES index (from 1) whose shape and texture label ``label`` takes.
    """
    side = min(h, w)
    while True:
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        extents = (0.45, 0.85) if n == 1 else (0.3, 0.65)
        labels = [int(x) for x in rng.integers(1, len(kinds) + 1, n)]
        shapes: list[np.ndarray] = []
        corners: list[tuple[int, int]] = []
        full: list[np.ndarray] = []
        for label in labels:
            kind = kinds[label - 1]
            shape = _silhouette(rng, kind, rng.uniform(*extents) * side, (int(0.95 * h), int(0.95 * w)))
            near = None
            if corners and rng.random() < 0.6:
                k = int(rng.integers(len(corners)))
                (ny, nx), (nh, nw) = corners[k], shapes[k].shape
                near = (ny, nx, ny + nh, nx + nw)
            y0, x0 = _place(rng, shape, h, w, near)
            canvas = np.zeros((h, w), bool)
            canvas[y0 : y0 + shape.shape[0], x0 : x0 + shape.shape[1]] = shape
            shapes.append(shape)
            corners.append((y0, x0))
            full.append(canvas)
        instances = visible_instances(full)
        band = void_band(instances)
        keep = [
            k
            for k, silhouette in enumerate(full)
            if np.count_nonzero(instances == k) >= MIN_VISIBLE_OWN * np.count_nonzero(silhouette)
            and np.count_nonzero((instances == k) & ~band) >= MIN_CORE_PIXELS
        ]
        if keep:  # dropping an occluder only uncovers the objects below it
            return [shapes[k] for k in keep], [corners[k] for k in keep], [labels[k] for k in keep]


def _distractors(rng: np.random.Generator, image: np.ndarray, light: float) -> None:
    """Unlabelled blobs and thick curved strokes on the background, some with a class's texture, in place."""
    h, w = image.shape[:2]
    side = min(h, w)
    for _ in range(int(rng.integers(1, 5))):
        pen = _Pen(rng.uniform(0.08, 0.2) * side)
        if rng.random() < 0.65:
            pen.polygon(_blob(rng, 1.0))
        else:
            start = (-0.9, rng.uniform(-0.5, 0.5))
            branch = _curve(rng, start, rng.uniform(-0.5, 0.5), rng.uniform(1.2, 1.8), rng.uniform(-1.5, 1.5))
            pen.stroke(branch, rng.uniform(0.1, 0.25))
        shape = _pose(rng, pen, upright=False)
        if shape.size == 0 or shape.shape[0] >= h or shape.shape[1] >= w:
            continue
        name = str(rng.choice(CLASS_SOURCES if rng.random() < 0.35 else BACKGROUND_SOURCES))
        y0, x0 = _place(rng, shape, h, w, None)
        layer = functools.partial(_texture, rng, name, zoom=(0.4, 1.2), tints=_ALL_TINTS)
        _composite(rng, image, shape, y0, x0, layer, light)


def class_kinds(classes: tuple[str, ...]) -> tuple[int, ...]:
    """The PHOTO_CLASSES index (from 1) of every name in ``classes``; a ValueError names an unknown or repeated one."""
    unknown = [name for name in classes if name not in PHOTO_CLASSES]
    if unknown or not classes or len(set(classes)) != len(classes):
        what = f"unknown class {unknown[0]!r}" if unknown else "an empty or repeated class list"
        raise ValueError(f"{what}; choose distinct names from {', '.join(PHOTO_CLASSES)}")
    return tuple(PHOTO_CLASSES.index(name) + 1 for name in classes)


def photo_sample(
    seed: int, index: int, size: int = 160, distractors: bool = True, classes: tuple[str, ...] = PHOTO_CLASSES
) -> PhotoSample:
    """Render image ``index`` of the photo-style dataset drawn with ``seed``; independent of the other images.

    ``distractors`` False leaves out the unlabelled blobs and strokes on the background. ``classes``
    (a subset of PHOTO_CLASSES, in label order) are the only object classes drawn; label k is
    ``classes[k - 1]``.
    """
    if size < MIN_SIZE:
        raise ValueError(f"photo-style images need size >= {MIN_SIZE}")
    kinds = class_kinds(classes)
    rng = np.random.default_rng([seed, index, _STREAM])
    h, w = size, int(round(size * rng.uniform(0.75, 1.33)))
    light = rng.uniform(0, 2 * math.pi)  # one light direction per image: shadows and shading agree
    image = _background(rng, h, w)
    if distractors:
        _distractors(rng, image, light)
    shapes, corners, labels = _layout(rng, h, w, kinds)
    silhouettes = []
    for shape, (y0, x0), label in zip(shapes, corners, labels):
        source = CLASS_SOURCES[kinds[label - 1] - 1]
        layer = functools.partial(_texture, rng, source, zoom=(0.5, 1.5), tints=CLASS_TINTS)
        _composite(rng, image, shape, y0, x0, layer, light)
        silhouette = np.zeros((h, w), bool)
        silhouette[y0 : y0 + shape.shape[0], x0 : x0 + shape.shape[1]] = shape
        silhouettes.append(silhouette)
    instances = visible_instances(silhouettes)
    mask = np.full((h, w), BACKGROUND, np.uint8)
    for k, label in enumerate(labels):
        mask[instances == k] = label
    mask[void_band(instances)] = IGNORE
    # The camera: uneven light, vignette, a little defocus, sensor noise.
    yy, xx = np.indices((h, w), np.float32)
    u, v = (xx - w / 2) / w, (yy - h / 2) / h
    theta = rng.uniform(0, 2 * math.pi)
    slope = 1 + rng.uniform(0.1, 0.35) * (math.cos(theta) * u + math.sin(theta) * v)
    gain = slope * (1 - rng.uniform(0, 0.35) * (u * u + v * v))
    image = cv2.GaussianBlur(image * gain[..., None], (0, 0), rng.uniform(0.3, 0.7))
    image += rng.normal(0, rng.uniform(1.5, 5), image.shape).astype(np.float32)
    boxes = [tight_box(s, label) for s, label in zip(silhouettes, labels)]
    return PhotoSample(np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, instances, boxes, silhouettes)


def generate_photo_dataset(
    out: str | Path, n_images: int = 240, size: int = 160, seed: int = 0, val_fraction: float = 0.25,
    distractors: bool = True, classes: tuple[str, ...] = PHOTO_CLASSES,
) -> dict:
    """Write the photo-style set in the VOC layout under ``out`` (splits and classes.txt as the demo set).

    ``classes`` picks which of PHOTO_CLASSES are drawn (fewer classes: an easier recognition task).

    Returns the demo set's summary (image counts per split, object counts per class, mean box fill
    = visible mask area over box area) plus ``mean_object_fill``: whole object area over box area,
    occluded parts included, i.e. how much of an annotator's box the object fills.
    """
    if n_images < 2 or size < MIN_SIZE or not 0 < val_fraction < 1:
        raise ValueError(f"generate_photo_dataset needs n_images >= 2, size >= {MIN_SIZE} and 0 < val_fraction < 1")
    class_kinds(classes)
    object_fills: list[float] = []

    def render(index: int) -> PhotoSample:
        sample = photo_sample(seed, index, size, distractors, classes)
        object_fills.extend(np.count_nonzero(s) / b.area for s, b in zip(sample.silhouettes, sample.boxes))
        return sample

    summary = write_synthetic_dataset(
        out, n_images, seed, val_fraction, tuple(classes), render, "photo", "synthetic photo set"
    )
    return {**summary, "mean_object_fill": float(np.mean(object_fills))}
