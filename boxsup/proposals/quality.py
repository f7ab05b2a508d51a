"""Proposal quality: how well the best candidate of a pool covers each ground-truth object."""

from __future__ import annotations

import numpy as np

from boxsup.data.annotations import ImageAnnotation
from boxsup.proposals.pool import CandidatePool


def mask_ious(pool: CandidatePool, mask: np.ndarray) -> np.ndarray:
    """IoU of every candidate with a boolean mask, (C,), with no per-candidate mask built."""
    inside = np.bincount(pool.atoms.ravel(), weights=mask.ravel().astype(np.float64), minlength=pool.n_atoms)
    intersection = pool.sum_over_candidates(inside)
    union = pool.areas() + mask.sum() - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def object_masks(annotation: ImageAnnotation, class_mask: np.ndarray) -> list[np.ndarray]:
    """Each box's object as the pixels of its class inside its box (VOC class masks have no instances)."""
    masks = []
    for box in annotation.boxes:
        m = np.zeros(class_mask.shape, dtype=bool)
        m[box.y0 : box.y1, box.x0 : box.x1] = class_mask[box.y0 : box.y1, box.x0 : box.x1] == box.label
        masks.append(m)
    return masks


def best_ious(pool: CandidatePool, objects: list[np.ndarray]) -> np.ndarray:
    """For each object, the IoU of the pool's best-matching candidate (0 for an empty pool)."""
    if pool.n_candidates == 0:
        return np.zeros(len(objects))
    return np.array([mask_ious(pool, m).max() for m in objects])
