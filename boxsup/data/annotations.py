"""Typed structures for what one training image carries: its boxes, its optional mask, its supervision."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

BACKGROUND = 0
IGNORE = 255  # VOC's "void" label: not counted in losses or metrics
ZERO_WIDTH_BOX = "zero-width box"  # the skip of a box with no width or height (a line, not an object)


class Supervision(str, Enum):
    """What the algorithm may use for an image: its GT mask, or only its boxes."""

    MASK = "mask"
    BOX = "box"


@dataclass(frozen=True)
class Box:
    """A ground-truth box in pixel coordinates, end-exclusive (x1, y1), with a class id >= 1."""

    x0: int
    y0: int
    x1: int
    y1: int
    label: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.int64)


@dataclass
class ImageAnnotation:
    """One image's annotation. ``mask`` is the GT label map when the dataset has one.

    ``supervision`` says whether the algorithm may see the mask. In box mode the mask stays here
    only to measure pseudo-label quality; the label update never reads it.
    """

    image_id: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    has_mask: bool = False
    supervision: Supervision = Supervision.BOX

    def boxes_array(self) -> np.ndarray:
        """Boxes as an (N, 4) int64 array of (x0, y0, x1, y1)."""
        return np.array([b.as_array() for b in self.boxes], dtype=np.int64).reshape(-1, 4)

    def labels_array(self) -> np.ndarray:
        return np.array([b.label for b in self.boxes], dtype=np.int64)
