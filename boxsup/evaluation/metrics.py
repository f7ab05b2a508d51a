"""Confusion-matrix segmentation metrics: mIoU, per-class IoU, pixel accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boxsup.data.annotations import IGNORE


@dataclass
class SegmentationScores:
    miou: float
    pixel_accuracy: float
    class_iou: np.ndarray  # (num_classes,), nan for classes absent from both prediction and target


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix: rows are targets, columns predictions."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add one prediction/target pair; target pixels equal to IGNORE (255) are left out."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
        valid = target != IGNORE
        t = target[valid].astype(np.int64)
        p = prediction[valid].astype(np.int64)
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def compute(self) -> SegmentationScores:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = m.sum()
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        return SegmentationScores(miou, float(tp.sum() / total) if total else 0.0, iou)
