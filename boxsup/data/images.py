"""Reading pictures as users expect: EXIF orientation applied, greyscale/CMYK/palette made RGB, one-line errors."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from boxsup.errors import BoxSupError

log = logging.getLogger(__name__)

# EXIF orientations 5-8 turn the picture by 90 degrees: width and height swap.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112


@contextmanager
def open_picture(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open`` (header only until pixels are asked for); a missing or undecodable file is one line."""
    if not path.is_file():
        raise BoxSupError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            yield im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BoxSupError(f"{path}: cannot decode {what} ({exc})") from None


def read_rgb(path: Path) -> np.ndarray:
    """The picture as an H x W x 3 uint8 RGB array, turned upright by its EXIF orientation."""
    with open_picture(path, "image") as im:
        try:
            upright = ImageOps.exif_transpose(im)
            return np.asarray(upright.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:  # truncated pixel data shows up only here
            raise BoxSupError(f"{path}: cannot decode image ({exc})") from None


def picture_size(path: Path) -> tuple[int, int]:
    """(width, height) of the upright picture, from its header alone (EXIF orientation counted)."""
    with open_picture(path, "image") as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        except (OSError, SyntaxError, ValueError):
            orientation = 1
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def size_text(width: int, height: int) -> str:
    return f"{width}x{height}"


class SizeMismatchError(BoxSupError):
    """An image's real size differs from its annotation's size or from its mask's size."""


@dataclass
class SkipCounts:
    """Counted, logged skips of boxes or images that a user should know about."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first place it happened

    def add(self, reason: str, where: str, quiet: bool = False) -> None:
        """Count one skip; logged as a warning unless ``quiet`` (then only the first of its kind is)."""
        self.counts[reason] += 1
        self.examples.setdefault(reason, where)
        if not quiet or self.counts[reason] == 1:
            log.warning("skipped %s: %s", where, reason)

    def merge(self, other: SkipCounts) -> None:
        self.counts.update(other.counts)
        for reason, where in other.examples.items():
            self.examples.setdefault(reason, where)
