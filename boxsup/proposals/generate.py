"""Proposal methods by name, and filling a ProposalStore for a dataset split.

Computed proposals see a copy of the image scaled down to a longest side of at most ``max_side``
(``proposals.max_side``), so that their memory and time do not grow with the photo: Selective
Search on a 6000 x 4000 picture needed more than 4 GB. The candidates keep their form, an atom map
plus a candidate-by-atom membership: the atom map is scaled back to the image's size by nearest
neighbour, so every pool has its image's size. VOC (500 px) and COCO (640 px) images are computed
as they are under the default.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from boxsup.data.dataset import SegmentationDataset
from boxsup.errors import BoxSupError
from boxsup.proposals.box_masks import grabcut, rectangles
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.store import ProposalStore
from boxsup.utils.progress import progress_bar

log = logging.getLogger(__name__)

METHODS = ("ss", "grabcut", "rectangles")  # computed here (MCG is imported)
MAX_SIDE = 640  # the default proposals.max_side, in pixels
MAX_CANDIDATES = 1000  # the default proposals.max_candidates

Make = Callable[[np.ndarray, np.ndarray], CandidatePool]


def _selective_search(image: np.ndarray, boxes: np.ndarray, max_candidates: int, seed: int) -> CandidatePool:
    from boxsup.proposals.selective_search import selective_search

    return selective_search(image, mode="fast", max_candidates=max_candidates, seed=seed)


def generator(method: str, max_candidates: int = MAX_CANDIDATES, seed: int = 0, max_side: int = MAX_SIDE) -> Make:
    """The function (image, boxes) -> CandidatePool for a method name, computed at most ``max_side`` px."""
    if method == "ss":
        return at_most(max_side, lambda image, boxes: _selective_search(image, boxes, max_candidates, seed))
    if method == "grabcut":
        return at_most(max_side, grabcut)
    if method == "rectangles":
        return at_most(max_side, rectangles)
    if method == "mcg":
        raise BoxSupError("proposals.method mcg: MCG proposals are imported, not computed; run `boxsup proposals import "
                          "--format mcg --mat-dir DIR --config FILE --out STORE` and set proposals.store")
    raise BoxSupError(f"proposals.method: unknown method {method!r} (choose from {', '.join(METHODS)})")


def at_most(max_side: int, make: Make) -> Make:
    """``make`` run on a copy of the image whose longest side is at most ``max_side`` (boxes scaled
    alike), its pool's atom map scaled back to the image's size; smaller images are left as they are."""

    def scaled(image: np.ndarray, boxes: np.ndarray) -> CandidatePool:
        height, width = image.shape[:2]
        factor = max_side / max(height, width)
        if factor >= 1:
            return make(image, boxes)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))  # cv2 order: (width, height)
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        pool = make(small, _scaled_boxes(boxes, (width, height), size))
        return CandidatePool(_nearest(pool.atoms, (height, width)), pool.membership)

    return scaled


def _scaled_boxes(boxes: np.ndarray, size: tuple[int, int], small: tuple[int, int]) -> np.ndarray:
    """Boxes (x0, y0, x1, y1, end-exclusive) of an image of ``size`` (w, h) on its copy of ``small``:
    the smallest whole-pixel boxes that cover them, at least one pixel wide and high."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ratio = np.array([small[0] / size[0], small[1] / size[1]] * 2)
    limit = np.array(small * 2)
    lo = np.clip(np.floor(boxes[:, :2] * ratio[:2]), 0, limit[:2] - 1)
    hi = np.clip(np.ceil(boxes[:, 2:] * ratio[2:]), lo + 1, limit[2:])
    return np.hstack([lo, hi]).astype(np.int64)


def _nearest(atoms: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The atom map scaled up to ``shape`` (h, w) by nearest neighbour (pixel centres); every atom keeps pixels."""
    rows = ((np.arange(shape[0]) + 0.5) * (atoms.shape[0] / shape[0])).astype(np.int64)
    cols = ((np.arange(shape[1]) + 0.5) * (atoms.shape[1] / shape[1])).astype(np.int64)
    return atoms[rows[:, None], cols[None, :]]


@dataclass
class BuildReport:
    made: int = 0
    reused: int = 0
    skipped: Counter = field(default_factory=Counter)


def store_meta(dataset: SegmentationDataset, method: str, max_candidates: int, seed: int,
               max_side: int = MAX_SIDE) -> dict[str, Any]:
    """The meta.json of a store of ``method`` proposals for ``dataset`` (written and checked alike);
    ``max_side`` only for the methods computed here (imported ones come at their files' size)."""
    meta = {"method": method, "max_candidates": max_candidates, "seed": seed, **dataset.origin()}
    if method in METHODS:
        meta["max_side"] = max_side
    return meta


UNREADABLE = "unreadable image or annotation"  # skip reasons of a build, in every builder's report
NO_CANDIDATE = "no candidate"


def prepare_store(store: ProposalStore, dataset: SegmentationDataset, method: str, max_candidates: int,
                  seed: int, max_side: int = MAX_SIDE) -> set[str]:
    """Refuse a store made for other data or settings, record this build's meta.json; the ids whose files it holds whole."""
    meta = store_meta(dataset, method, max_candidates, seed, max_side)
    store.check_origin(meta)
    store.write_meta(meta)
    return store.intact_ids()  # a damaged file is not counted as made: it is made again


def build_store(
    dataset: SegmentationDataset,
    store: ProposalStore,
    method: str,
    max_candidates: int = MAX_CANDIDATES,
    seed: int = 0,
    progress: bool = True,
    ids: list[str] | None = None,
    max_side: int = MAX_SIDE,
) -> BuildReport:
    """Make the candidate pool of every image of ``dataset`` (or of ``ids``) that the store lacks.

    Existing files are kept, so an interrupted build resumes. A store made by another method or
    for another dataset or split is refused rather than mixed. An image whose annotation or
    pixels cannot be read is left out, counted in the report and logged. ``max_side``: see the module.
    """
    stored = prepare_store(store, dataset, method, max_candidates, seed, max_side)
    make = generator(method, max_candidates, seed, max_side)
    report = BuildReport()
    for image_id in progress_bar(dataset.ids if ids is None else ids, desc=f"proposals[{method}]", enabled=progress, unit="img"):
        if image_id in stored:
            report.reused += 1
            continue
        try:
            pool = make(dataset.image(image_id), dataset.annotation(image_id).boxes_array())
        except BoxSupError as exc:
            report.skipped[UNREADABLE] += 1
            log.warning("skipped %s", exc)
            continue
        if pool.n_candidates == 0:
            report.skipped[NO_CANDIDATE] += 1
            log.warning("%s: no candidate segment produced; the image will be skipped in label updates", image_id)
        store.save(image_id, pool)
        report.made += 1
    return report
