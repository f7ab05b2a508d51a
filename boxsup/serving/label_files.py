"""Prediction files: label maps as VOC-palette PNGs (pixel value = class id) and colour overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from boxsup.data.voc import voc_palette
from boxsup.utils.files import atomic_path

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
OVERLAY_ALPHA = 0.5  # weight of the class colour over the picture, on non-background pixels


def write_label_png(path: Path, label_map: np.ndarray) -> None:
    """Write an (H, W) map of class ids as a palette PNG with the VOC colours, atomically."""
    labels = np.ascontiguousarray(label_map, dtype=np.uint8)
    png = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    png.putpalette(voc_palette())
    with atomic_path(path, suffix=".png") as tmp:
        png.save(tmp, format="PNG")


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The RGB image with every non-background pixel blended towards its class colour."""
    colours = _PALETTE[label_map].astype(np.float32)
    blended = image.astype(np.float32)
    objects = label_map > 0
    blended[objects] = (1 - alpha) * blended[objects] + alpha * colours[objects]
    return blended.round().astype(np.uint8)


def write_overlay(path: Path, image: np.ndarray, label_map: np.ndarray) -> None:
    """Write :func:`overlay` as a JPEG (``.jpg``) or PNG (``.png``), atomically."""
    picture = Image.fromarray(overlay(image, label_map))
    is_png = path.suffix.lower() == ".png"
    with atomic_path(path, suffix=path.suffix) as tmp:
        picture.save(tmp, format="PNG" if is_png else "JPEG", quality=90)
