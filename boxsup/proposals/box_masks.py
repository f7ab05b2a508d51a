"""Candidates derived from the boxes themselves: filled rectangles and GrabCut (the paper's baselines)."""

from __future__ import annotations

import cv2
import numpy as np

from boxsup.proposals.pool import CandidatePool


def rectangle_masks(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """One filled rectangle mask per box, (B, H, W) bool."""
    masks = np.zeros((len(boxes), *shape), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.int64).reshape(-1, 4)):
        masks[i, y0:y1, x0:x1] = True
    return masks


def rectangles(image: np.ndarray, boxes: np.ndarray) -> CandidatePool:
    """Each box filled as a rectangle: the naive baseline of Table 2."""
    return CandidatePool.from_masks(rectangle_masks(image.shape[:2], boxes))


def grabcut_mask(image: np.ndarray, box: np.ndarray, iterations: int = 5) -> np.ndarray:
    """GrabCut foreground of one box, (H, W) bool; the filled box when GrabCut finds nothing.

    GrabCut needs a margin of background around the box; a box touching the image on all sides
    leaves no background model, and also falls back to the rectangle.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    rect_mask = np.zeros((h, w), dtype=bool)
    rect_mask[y0:y1, x0:x1] = True
    if x1 - x0 < 2 or y1 - y0 < 2 or rect_mask.all():
        return rect_mask
    mask = np.zeros((h, w), dtype=np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    cv2.setRNGSeed(0)
    cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return fg if fg.any() else rect_mask


def grabcut(image: np.ndarray, boxes: np.ndarray, iterations: int = 5) -> CandidatePool:
    """One GrabCut segment per box (Table 2's GrabCut baseline)."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    masks = np.stack([grabcut_mask(image, b, iterations) for b in boxes]) if len(boxes) else np.zeros((0, *image.shape[:2]), bool)
    return CandidatePool.from_masks(masks)
