"""Reading pictures as users expect: EXIF orientation applied, greyscale/CMYK/palette made RGB, one-line errors.

High bit depths are scaled to 8 bits (16-bit greyscale and RGB: the high byte); alpha is dropped.
Pixels whose range the file does not fix (32-bit float, 32-bit integers beyond 16 bits) are refused
with one line, never turned into a blank picture.
"""

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
# Pillow's 16-bit greyscale modes; "I" (32-bit integers) is how Pillow reads 16-bit PGM files.
_SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_MAX_16_BIT = 65535
_UNSCALABLE_MODES = {"F": "32-bit floating-point"}  # mode -> what it holds


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
    """The picture as an H x W x 3 uint8 RGB array, turned upright by its EXIF orientation.

    Every image reader (training, evaluation, ``boxsup predict``) reads pixels through here.
    """
    with open_picture(path, "image") as im:
        check_image_mode(im, path)
        try:
            upright = ImageOps.exif_transpose(im)
            return rgb8(upright, path)
        except (OSError, SyntaxError, ValueError) as exc:  # truncated pixel data shows up only here
            raise BoxSupError(f"{path}: cannot decode image ({exc})") from None


def check_image_mode(im: Image.Image, path: Path) -> None:
    """Refuse, from the header alone, pixels that have no 8-bit reading (their range is not in the file)."""
    if im.mode in _UNSCALABLE_MODES:
        raise BoxSupError(f"{path}: cannot read a {_UNSCALABLE_MODES[im.mode]} image as 8-bit RGB; "
                          "save it as 8- or 16-bit RGB or greyscale")


def rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """H x W x 3 uint8 of a decoded picture: 16-bit values scaled to 8 bits (high byte), alpha dropped."""
    if im.mode in _SIXTEEN_BIT_GREY_MODES:
        grey = np.asarray(im)
        if grey.size and (int(grey.min()) < 0 or int(grey.max()) > _MAX_16_BIT):
            raise BoxSupError(f"{path}: cannot read a 32-bit integer image with values beyond 0..{_MAX_16_BIT} "
                              "as 8-bit RGB; save it as 8- or 16-bit RGB or greyscale")
        return np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the palette's colours, without Pillow's warning about a transparent palette
    return np.asarray(im.convert("RGB"))


def picture_size(path: Path) -> tuple[int, int]:
    """(width, height) of the upright picture, from its header alone (EXIF orientation counted).

    A picture that has no 8-bit reading is refused here already, as an unreadable one.
    """
    with open_picture(path, "image") as im:
        check_image_mode(im, path)
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
