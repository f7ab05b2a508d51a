"""Proposal methods by name, and filling a ProposalStore for a dataset split."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from boxsup.data.dataset import SegmentationDataset
from boxsup.errors import BoxSupError
from boxsup.proposals.box_masks import grabcut, rectangles
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.store import ProposalStore

log = logging.getLogger(__name__)

METHODS = ("ss", "grabcut", "rectangles")


def _selective_search(image: np.ndarray, boxes: np.ndarray, max_candidates: int, seed: int) -> CandidatePool:
    from boxsup.proposals.selective_search import selective_search

    return selective_search(image, mode="fast", max_candidates=max_candidates, seed=seed)


def generator(method: str, max_candidates: int = 2000, seed: int = 0) -> Callable[[np.ndarray, np.ndarray], CandidatePool]:
    """The function (image, boxes) -> CandidatePool for a method name."""
    if method == "ss":
        return lambda image, boxes: _selective_search(image, boxes, max_candidates, seed)
    if method == "grabcut":
        return lambda image, boxes: grabcut(image, boxes)
    if method == "rectangles":
        return lambda image, boxes: rectangles(image, boxes)
    if method == "mcg":
        raise BoxSupError("proposals.method mcg: MCG proposals are imported, not computed; run `boxsup proposals import "
                          "--format mcg --mat-dir DIR --config FILE --out STORE` and set proposals.store")
    raise BoxSupError(f"proposals.method: unknown method {method!r} (choose from {', '.join(METHODS)})")


@dataclass
class BuildReport:
    made: int = 0
    reused: int = 0
    skipped: Counter = field(default_factory=Counter)


def store_meta(dataset: SegmentationDataset, method: str, max_candidates: int, seed: int) -> dict[str, Any]:
    """The meta.json of a store of ``method`` proposals for ``dataset`` (written and checked alike)."""
    return {"method": method, "max_candidates": max_candidates, "seed": seed, **dataset.origin()}


UNREADABLE = "unreadable image or annotation"  # skip reasons of a build, in every builder's report
NO_CANDIDATE = "no candidate"


def prepare_store(store: ProposalStore, dataset: SegmentationDataset, method: str, max_candidates: int,
                  seed: int) -> set[str]:
    """Refuse a store made for other data or settings, record this build's meta.json; the ids it holds."""
    meta = store_meta(dataset, method, max_candidates, seed)
    store.check_origin(meta)
    store.write_meta(meta)
    return store.stored_ids()  # one listing, not a request per image (object stores)


def build_store(
    dataset: SegmentationDataset,
    store: ProposalStore,
    method: str,
    max_candidates: int = 2000,
    seed: int = 0,
    progress: bool = True,
    ids: list[str] | None = None,
) -> BuildReport:
    """Make the candidate pool of every image of ``dataset`` (or of ``ids``) that the store lacks.

    Existing files are kept, so an interrupted build resumes. A store made by another method or
    for another dataset or split is refused rather than mixed. An image whose annotation or
    pixels cannot be read is left out, counted in the report and logged.
    """
    stored = prepare_store(store, dataset, method, max_candidates, seed)
    make = generator(method, max_candidates, seed)
    report = BuildReport()
    for image_id in tqdm(dataset.ids if ids is None else ids, desc=f"proposals[{method}]", disable=not progress, unit="img"):
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
