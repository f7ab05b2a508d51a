"""Boxes derived from masks, for formats that ship masks but no box files (SBD, PASCAL-CONTEXT).

Boxes are 0-based and end-exclusive (``Box``): the tightest box around the pixels of one instance
or one connected region.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from boxsup.data.annotations import Box

# 8-connectivity: pixels touching by an edge or a corner belong to one region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _box(region: tuple[slice, slice], label: int) -> Box:
    rows, cols = region
    return Box(int(cols.start), int(rows.start), int(cols.stop), int(rows.stop), int(label))


def boxes_from_instances(instance_map: np.ndarray, instance_classes: Sequence[int | None],
                         ignore: Iterable[int] = (255,)) -> list[Box]:
    """One tight box per instance present in ``instance_map``, in instance-id order.

    Instance ``i`` (1-based, 0 is background) has class ``instance_classes[i - 1]``; an instance
    whose class is None or below 1 (dropped by the caller's class mapping) gets no box, and an id
    listed but absent from the map gets none either. Ids in ``ignore`` beyond the list (255, void)
    are skipped; any other id beyond the list raises ``ValueError``.
    """
    ids = np.asarray(instance_map)
    if ids.ndim != 2:
        raise ValueError(f"instance map must be 2-D, got shape {ids.shape}")
    n = len(instance_classes)
    present = np.unique(ids)
    skipped = set(ignore)
    bad = [int(v) for v in present if v < 0 or (v > n and int(v) not in skipped)]
    if bad:
        raise ValueError(f"instance ids {bad} beyond the {n} instances listed")
    kept = np.where((ids >= 1) & (ids <= n), ids, 0).astype(np.int64)
    boxes = []
    for index, region in enumerate(ndimage.find_objects(kept), start=1):
        label = instance_classes[index - 1]
        if region is not None and label is not None and label >= 1:
            boxes.append(_box(region, label))
    return boxes


def boxes_from_class_mask(mask: np.ndarray, ignore: Iterable[int] = (0, 255), min_pixels: int = 1) -> list[Box]:
    """One tight box per 8-connected region of each class in ``mask``, labelled with that class.

    Classes in ``ignore`` (background, void) get no boxes; regions of fewer than ``min_pixels``
    pixels are skipped. Order: by class id, then by the region's first pixel in raster order.
    Every other value must be a class id >= 1 (``ValueError`` otherwise).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"class mask must be 2-D, got shape {mask.shape}")
    skipped = set(ignore)
    boxes = []
    for value in np.unique(mask):
        cls = int(value)
        if cls in skipped:
            continue
        if cls < 1:
            raise ValueError(f"class id {cls} in the mask cannot label a box (ids >= 1, or ignore it)")
        regions, count = ndimage.label(mask == value, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        for index, region in enumerate(ndimage.find_objects(regions), start=1):
            if region is not None and sizes[index] >= min_pixels:
                boxes.append(_box(region, cls))
    return boxes
