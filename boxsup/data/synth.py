"""Deterministic synthetic demo dataset in the VOC layout: textured shapes on cluttered backgrounds.

Each image holds 1-4 objects. A class is a shape (star, ring, cross, triangle, crescent) with its
own hue family and texture, varied per instance and lit by a soft directional shading. Objects
sit on a cluttered background (colour gradients, low-frequency noise, textured ellipses,
rectangles, bands and blobs) whose patches may borrow a class's colour and texture, so only shape
and context tell objects apart. Later objects occlude earlier ones: the mask holds the visible
pixels, each box tightly bounds them, and objects left too small or mostly hidden are not drawn.
The label mask is the very raster that paints each object.
"""

from __future__ import annotations

import colorsys
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from boxsup.data.annotations import BACKGROUND, Box
from boxsup.data.voc import write_split, write_voc_sample
from boxsup.errors import BoxSupError
from boxsup.utils.files import write_text_atomic
from boxsup.utils.progress import progress_bar

DEMO_CLASSES: tuple[str, ...] = ("star", "ring", "cross", "triangle", "crescent")
CLASS_HUES = (45.0, 210.0, 0.0, 120.0, 290.0)  # degrees, one hue family per class
CLASS_TEXTURES = ("speckle", "stripes", "checks", "dots", "waves")
TEXTURES = (*CLASS_TEXTURES, "flat")

MIN_VISIBLE_AREA = 0.015  # fraction of the image an object must keep visible
MIN_VISIBLE_OWN = 0.5  # fraction of its own (in-image) area an object must keep visible
RADIUS_RANGE = (0.12, 0.3)  # object circumradius, fraction of the image side


@dataclass(frozen=True)
class SynthSample:
    """One rendered image: RGB uint8, class-id mask, instance map (index into boxes, -1 = none) and boxes."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    boxes: list[Box]


@dataclass(frozen=True)
class _Frame:
    """A placed shape's pose: centre, circumradius (px), rotation (rad) and minor-axis squash."""

    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float

    def local(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates in the shape's frame, where the shape fits the unit disc."""
        dx, dy = xs - self.cx, ys - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        return (dx * c + dy * s) / self.radius, (dy * c - dx * s) / (self.radius * self.aspect)


# ---------------------------------------------------------------- shapes (unit-disc frame)


def _star(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    points, inner = 5, rng.uniform(0.38, 0.5)
    half = np.pi / points
    phi = np.mod(np.arctan2(v, u), 2 * half)
    phi = np.minimum(phi, 2 * half - phi)
    r = np.hypot(u, v)
    px, py = r * np.cos(phi), r * np.sin(phi)
    bx, by = inner * np.cos(half), inner * np.sin(half)
    return (bx - 1) * py - by * (px - 1) >= 0  # inside the edge from the tip (1, 0) to the notch


def _ring(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = np.hypot(u, v)
    return (r <= 1) & (r > rng.uniform(0.45, 0.65))


def _cross(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = rng.uniform(0.2, 0.3)
    au, av = np.abs(u) * np.sqrt(1 + w * w), np.abs(v) * np.sqrt(1 + w * w)
    return ((au <= 1) & (av <= w)) | ((av <= 1) & (au <= w))


def _triangle(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
    radii = rng.uniform(0.85, 1.0, 3)
    vx, vy = radii * np.cos(angles), radii * np.sin(angles)
    inside = np.ones(u.shape, bool)
    for i in range(3):
        j = (i + 1) % 3
        inside &= (vx[j] - vx[i]) * (v - vy[i]) - (vy[j] - vy[i]) * (u - vx[i]) >= 0
    return inside


def _crescent(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    offset, cut = rng.uniform(0.35, 0.55), rng.uniform(0.75, 0.95)
    return (np.hypot(u, v) <= 1) & (np.hypot(u - offset, v) > cut)


SHAPES = (_star, _ring, _cross, _triangle, _crescent)  # aligned with DEMO_CLASSES


def _clutter_shape(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A background patch: ellipse, rectangle, long band or irregular blob."""
    kind = rng.integers(4)
    if kind == 0:
        return np.hypot(u, v * rng.uniform(1, 3)) <= 1
    if kind == 1:
        return (np.abs(u) <= 1) & (np.abs(v) <= rng.uniform(0.3, 1))
    if kind == 2:
        return np.abs(v) <= rng.uniform(0.08, 0.25)
    field = smooth_noise(rng, u.shape, cells=int(rng.integers(3, 6)))
    return (np.hypot(u, v) + 0.6 * field) <= 0.9


# ---------------------------------------------------------------- textures and colour


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-range noise with features about shape / cells pixels wide."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC) / 2


def _texture(name: str, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A texture field in [-1, 1] over the image, with random scale, orientation and phase."""
    theta = rng.uniform(0, np.pi)
    a = xs * np.cos(theta) + ys * np.sin(theta) + rng.uniform(0, 100)
    b = ys * np.cos(theta) - xs * np.sin(theta) + rng.uniform(0, 100)
    if name == "speckle":
        return np.clip(smooth_noise(rng, xs.shape, xs.shape[1] // int(rng.integers(2, 4))), -1, 1)
    if name == "stripes":
        return np.tanh(3 * np.sin(2 * np.pi * a / rng.uniform(5, 10)))
    if name == "checks":
        period = rng.uniform(4, 8)
        return np.tanh(4 * np.sin(np.pi * a / period) * np.sin(np.pi * b / period))
    if name == "dots":
        period = rng.uniform(6, 10)
        da, db = np.mod(a, period) - period / 2, np.mod(b, period) - period / 2
        return np.where(np.hypot(da, db) <= 0.3 * period, 1.0, -1.0)
    if name == "waves":
        warp = rng.uniform(2, 4) * np.sin(2 * np.pi * b / rng.uniform(10, 20))
        return np.sin(2 * np.pi * (a + warp) / rng.uniform(6, 10))
    return np.zeros_like(xs)


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return 255 * np.array(colorsys.hsv_to_rgb((hue_deg / 360) % 1, sat, val), np.float32)


def _paint(
    rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, hue: float, sat: float, val: float, texture: str
) -> np.ndarray:
    """An HxWx3 layer: two tones of one hue mixed by a texture, under a soft directional light."""
    light = rng.uniform(0, 2 * np.pi)
    tone_a = _hsv(hue, sat, val)
    tone_b = _hsv(hue + rng.uniform(-10, 10), sat * rng.uniform(0.7, 1), val * rng.uniform(0.5, 0.75))
    t = (_texture(texture, xs, ys, rng)[..., None] + 1) / 2
    size = xs.shape[1]
    shade = 1 + rng.uniform(0.1, 0.3) * (np.cos(light) * xs + np.sin(light) * ys - size / 2) / size
    return (tone_a * t + tone_b * (1 - t)) * shade[..., None]


def _object_layer(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, label: int) -> np.ndarray:
    hue = CLASS_HUES[label - 1] + rng.uniform(-12, 12)
    return _paint(rng, xs, ys, hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95), CLASS_TEXTURES[label - 1])


def _clutter_layer(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A background patch's paint; about a third borrow a class's hue family."""
    if rng.random() < 0.35:
        hue = rng.choice(CLASS_HUES) + rng.uniform(-15, 15)
    else:
        hue = rng.uniform(0, 360)
    texture = str(rng.choice(TEXTURES))
    return _paint(rng, xs, ys, hue, rng.uniform(0.1, 0.9), rng.uniform(0.3, 0.95), texture)


# ---------------------------------------------------------------- composition


def _random_frame(rng: np.random.Generator, size: int, radius_range: tuple[float, float]) -> _Frame:
    cx, cy = rng.uniform(0.12, 0.88, 2) * size
    return _Frame(cx, cy, rng.uniform(*radius_range) * size, rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1))


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Gradient between two muted colours plus colour noise, overlaid with 5-10 textured patches."""
    size = xs.shape[1]
    c0, c1 = (_hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.9)) for _ in range(2))
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(theta) * (xs - size / 2) + np.sin(theta) * (ys - size / 2)) / size, 0, 1)[..., None]
    image = c0 * (1 - t) + c1 * t
    image += 25 * np.stack([smooth_noise(rng, xs.shape, int(rng.integers(3, 7))) for _ in range(3)], -1)
    for _ in range(rng.integers(5, 11)):
        patch = _clutter_shape(*_random_frame(rng, size, (0.08, 0.4)).local(xs, ys), rng)
        image[patch] = _clutter_layer(rng, xs, ys)[patch]
    return image


def visible_instances(shapes: list[np.ndarray]) -> np.ndarray:
    """Instance map of stacked shapes, later on top; -1 where none."""
    instances = np.full(shapes[0].shape, -1, np.int16)
    for k, shape in enumerate(shapes):
        instances[shape] = k
    return instances


def _place_objects(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Shapes and labels of 1-4 objects, keeping those that stay large and mostly visible."""
    size = xs.shape[1]
    while True:
        labels = [int(x) for x in rng.integers(1, len(DEMO_CLASSES) + 1, rng.integers(1, 5))]
        shapes = [SHAPES[c - 1](*_random_frame(rng, size, RADIUS_RANGE).local(xs, ys), rng) for c in labels]
        instances = visible_instances(shapes)
        keep = [
            k
            for k, shape in enumerate(shapes)
            if (seen := np.count_nonzero(instances == k)) >= MIN_VISIBLE_AREA * xs.size
            and seen >= MIN_VISIBLE_OWN * np.count_nonzero(shape)
        ]
        if keep:  # dropping occluders only grows what the kept objects show
            return [shapes[k] for k in keep], [labels[k] for k in keep]


def tight_box(region: np.ndarray, label: int) -> Box:
    """The smallest box (end-exclusive) holding every true pixel of ``region``, with class ``label``."""
    ys, xs = np.nonzero(region)
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, label)


def synth_sample(seed: int, index: int, size: int = 128) -> SynthSample:
    """Render image ``index`` of the dataset drawn with ``seed``; independent of the other images."""
    rng = np.random.default_rng([seed, index])
    ys, xs = (g.astype(np.float32) + 0.5 for g in np.indices((size, size)))
    image = _background(rng, xs, ys)
    shapes, labels = _place_objects(rng, xs, ys)
    instances = visible_instances(shapes)
    mask = np.full((size, size), BACKGROUND, np.uint8)
    for k, (shape, label) in enumerate(zip(shapes, labels)):
        image[shape] = _object_layer(rng, xs, ys, label)[shape]
        mask[instances == k] = label
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 0.8))
    image += rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)
    boxes = [tight_box(instances == k, label) for k, label in enumerate(labels)]
    return SynthSample(np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, instances, boxes)


def generate_dataset(
    out: str | Path, n_images: int = 240, size: int = 128, seed: int = 0, val_fraction: float = 0.25
) -> dict:
    """Write the demo set in the VOC layout under ``out`` with train/val/trainval splits and classes.txt.

    Returns a summary: image counts per split, object counts per class and the mean box fill
    (visible mask area over box area).
    """
    if n_images < 2 or size < 32 or not 0 < val_fraction < 1:
        raise ValueError("generate_dataset needs n_images >= 2, size >= 32 and 0 < val_fraction < 1")
    return write_synthetic_dataset(
        out, n_images, seed, val_fraction, DEMO_CLASSES, lambda i: synth_sample(seed, i, size), "synth", "synthetic demo set"
    )


def ensure_demo_dataset(out: str | Path) -> None:
    """Write the demo set to ``out`` when it is absent or an empty folder; a folder holding anything is
    left as it is (it is the user's dataset, read as such), and a file there is refused.

    The set is written beside ``out`` and moved into place whole, so an interrupted run leaves no
    half-written dataset that a later run would take for the user's.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BoxSupError(f"{out}: not a directory; give a dataset root in the VOC layout")
    if out.exists() and any(out.iterdir()):
        return
    print(f"writing the synthetic demo dataset to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        generate_dataset(Path(tmp) / "set")
        if out.exists():
            out.rmdir()
        os.replace(Path(tmp) / "set", out)


def write_synthetic_dataset(
    out: str | Path,
    n_images: int,
    seed: int,
    val_fraction: float,
    classes: tuple[str, ...],
    render: Callable[[int], SynthSample],
    prefix: str,
    desc: str,
) -> dict:
    """Write images ``render(1) .. render(n_images)`` as ``<prefix>_000001 ..`` in the VOC layout.

    Shared by the synthetic generators so that every style gets the same layout: train/val/trainval
    splits (val drawn with ``seed``), classes.txt, and the summary ``generate_dataset`` documents
    (box fill = visible pixels of the object, as ``sample.instances`` holds them, over box area).
    """
    out = Path(out)
    ids = [f"{prefix}_{i:06d}" for i in range(1, n_images + 1)]
    objects: Counter = Counter()
    fills = []
    for i, image_id in enumerate(progress_bar(ids, desc=desc, unit="img"), start=1):
        sample = render(i)
        write_voc_sample(out, image_id, sample.image, sample.boxes, classes, sample.mask)
        objects.update(classes[b.label - 1] for b in sample.boxes)
        fills += [np.count_nonzero(sample.instances == k) / b.area for k, b in enumerate(sample.boxes)]
    n_val = min(n_images - 1, max(1, round(n_images * val_fraction)))
    order = np.random.default_rng(seed).permutation(n_images)
    splits = {"val": sorted(ids[i] for i in order[:n_val]), "train": sorted(ids[i] for i in order[n_val:]), "trainval": ids}
    for split, split_ids in splits.items():
        write_split(out, split, split_ids)
    write_text_atomic(out / "classes.txt", "\n".join(classes) + "\n")
    return {
        "images": {split: len(split_ids) for split, split_ids in splits.items()},
        "objects": {name: objects[name] for name in classes},
        "mean_box_fill": float(np.mean(fills)),
    }
