"""Which training images the algorithm may see masks for: ``data.supervision`` mask | box | semi."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.errors import BoxSupError
from boxsup.utils.lists import list_ids


def images_with_masks(ids: list[str], mode: str, seed: int, fraction: float = 0.1, mask_list: str | None = None) -> set[str]:
    """The ids whose GT masks are used as training targets.

    ``mask``: all; ``box``: none; ``semi``: the ids in ``mask_list`` if given, otherwise a
    seeded random ``fraction`` of the split (the paper's VOC semi setting keeps 1,464 of 10,582).
    """
    if mode == "mask":
        return set(ids)
    if mode == "box":
        return set()
    if mode != "semi":
        raise BoxSupError(f"config key data.supervision: unknown mode {mode!r} (mask, box or semi)")
    if mask_list is not None:
        return read_id_list(mask_list, ids, "data.mask_list")
    if not 0.0 <= fraction <= 1.0:
        raise BoxSupError(f"config key data.mask_fraction: must lie in [0, 1], got {fraction}")
    order = np.random.default_rng(seed).permutation(sorted(ids))
    return set(order[: int(round(fraction * len(ids)))].tolist())


def read_id_list(path: str | Path, ids: list[str], key: str) -> set[str]:
    """The ids of a list file (one per line, as ``list_ids`` reads them), all of which must be in ``ids``."""
    path = Path(path)
    if not path.is_file():
        raise BoxSupError(f"{path}: {key} file not found")
    listed = set(list_ids(path, f"{key} file"))
    unknown = listed - set(ids)
    if unknown:
        raise BoxSupError(f"{path}: {len(unknown)} ids not in the training split, e.g. {sorted(unknown)[0]!r}")
    return listed


def audit_images(with_masks: list[str], seed: int, fraction: float = 0.0, audit_list: str | None = None,
                 ids: list[str] | None = None) -> set[str]:
    """Training images whose masks only score the label updates (``pseudo_miou``), never train.

    The ids in ``audit_list`` (each must have a mask), else a seeded ``fraction`` of the images with
    masks. For users whose box images have no masks: a few masked images, treated as box-only, tell
    whether each round's labels get better.
    """
    if audit_list is not None:
        listed = read_id_list(audit_list, ids if ids is not None else with_masks, "data.audit_list")
        without = listed - set(with_masks)
        if without:
            raise BoxSupError(f"{audit_list}: {len(without)} audit images have no mask, e.g. {sorted(without)[0]!r}")
        return listed
    order = np.random.default_rng([seed, 1]).permutation(sorted(with_masks))
    return set(order[: int(round(fraction * len(with_masks)))].tolist())


def apply_supervision(annotations: list[ImageAnnotation], masked: set[str]) -> list[str]:
    """Set each annotation's supervision kind; returns ids that were asked for a mask but have none."""
    missing = []
    for ann in annotations:
        if ann.image_id in masked:
            if ann.has_mask:
                ann.supervision = Supervision.MASK
            else:
                missing.append(ann.image_id)
                ann.supervision = Supervision.BOX
        else:
            ann.supervision = Supervision.BOX
    return missing
