"""Boundary vs interior accuracy ("trimap" bands around GT boundaries; BoxSup Fig. 4, DeepLab Sec. 4).

A labelled pixel is in the band of width d when a pixel of another GT label lies within d px of it
(Euclidean). Void (255) counts as another label, so the void outlines that PASCAL VOC draws between
objects make bands, as in DeepLab's protocol; void pixels themselves are never scored. The
*interior* at width d is every other labelled pixel. The image border is no boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from boxsup.data.annotations import IGNORE
from boxsup.evaluation.metrics import ConfusionMatrix, SegmentationScores


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Per pixel of a GT mask (H, W): the Euclidean distance in px to the nearest pixel of another label
    (void included); ``inf`` where the mask holds one label only. Float64 (H, W)."""
    distance = np.full(mask.shape, np.inf)
    labels = np.unique(mask)
    if len(labels) < 2:
        return distance
    for label in labels:
        inside = mask == label
        distance[inside] = ndimage.distance_transform_edt(inside)[inside]
    return distance


def band_masks(mask: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
    """For each width d, the boolean (H, W) band: labelled pixels within d px of another label."""
    distance = boundary_distance(mask)
    labelled = mask != IGNORE
    return [labelled & (distance <= width) for width in widths]


@dataclass
class TrimapScores:
    """Scores inside (boundary) and outside (interior) the band, and the band's share of labelled pixels."""

    width: int
    boundary: SegmentationScores
    interior: SegmentationScores
    band_fraction: float


class TrimapConfusion:
    """Two confusion matrices per band width (band, interior), filled from each image's one prediction."""

    def __init__(self, num_classes: int, widths: Sequence[int]):
        self.widths = sorted(set(int(w) for w in widths))
        self.band = {w: ConfusionMatrix(num_classes) for w in self.widths}
        self.interior = {w: ConfusionMatrix(num_classes) for w in self.widths}

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Score one prediction against its GT mask at every width."""
        for width, band in zip(self.widths, band_masks(target, self.widths)):
            self.band[width].update(prediction, np.where(band, target, IGNORE))
            self.interior[width].update(prediction, np.where(band, IGNORE, target))

    def compute(self) -> list[TrimapScores]:
        """One :class:`TrimapScores` per width, narrowest first."""
        scores = []
        for width in self.widths:
            in_band, outside = self.band[width].matrix.sum(), self.interior[width].matrix.sum()
            fraction = float(in_band / (in_band + outside)) if in_band + outside else 0.0
            scores.append(TrimapScores(width, _scores_or_nan(self.band[width]), _scores_or_nan(self.interior[width]), fraction))
        return scores


def _scores_or_nan(confusion: ConfusionMatrix) -> SegmentationScores:
    """The matrix's scores; NaN (shown as "nan", not a misleading 0) when no pixel fell in it, e.g. the
    interior of a small image at a wide band."""
    if confusion.matrix.sum():
        return confusion.compute()
    return SegmentationScores(float("nan"), float("nan"), np.full(confusion.num_classes, np.nan))


def format_trimap_table(curves: dict[str, list[TrimapScores]]) -> str:
    """Rows: band width; columns: the band's share of labelled pixels, then each model's boundary and interior mIoU."""
    headers = ["width px", "band %"] + [f"{label} {part}" for label in curves for part in ("boundary", "interior")]
    widths = [max(len(h), 8) for h in headers]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    first = next(iter(curves.values()))
    for row, scores in enumerate(first):
        cells = [str(scores.width), f"{100 * scores.band_fraction:.1f}"]
        for curve in curves.values():
            cells += [f"{curve[row].boundary.miou:.4f}", f"{curve[row].interior.miou:.4f}"]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)
