"""One label-update round of one worker (Sec. 4.3, the E-step's side on the network): its share of the
box images through the network, their per-atom costs to the assignment pool, the round's results
summed over every worker.

The share goes through the network in batches of one image size (``boxsup.trainers.label_inputs``
makes them in loader processes), under the run's precision and with cuDNN untuned (whole images come
in many sizes); each batch's per-atom sums travel to the host while the next batch is queued.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from boxsup.assign.diagnostics import ChoiceDiagnostics
from boxsup.data.annotations import ImageAnnotation
from boxsup.data.dataset import SegmentationDataset
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.models.kernels import untuned_cudnn
from boxsup.models.precision import FP32, Precision
from boxsup.trainers.epoch import batch_log_probs
from boxsup.trainers.job import TrainingJob, WorkerContext
from boxsup.trainers.label_inputs import (
    AtomSums,
    LabelItem,
    SplitAtomCache,
    SplitAtoms,
    device_images,
    label_round_batches,
    reduce_to_atoms,
    same_size_groups,
)
from boxsup.trainers.training_set import loader_workers
from boxsup.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class RoundSummary:
    """One label-update round, summed over all workers."""

    labelled: list[str]
    skipped: Counter
    boxes: int
    chosen_cost_sum: float
    confusions: dict[str, np.ndarray]  # "chosen" (the painted labels), "eo_best", "oracle", "kept" (the
    # painted labels off the void pixels): vs the audit images' masks
    diagnostics: ChoiceDiagnostics
    seconds: float
    cache_mb: float | None = None  # MiB the actors' pool caches hold after the round (rank 0 only)

    def metrics(self) -> dict[str, float | None]:
        """``pseudo_miou`` (the round's labels), ``pseudo_miou_eo_best`` / ``_oracle`` (the box's or the
        best available choice, on the same images), ``pseudo_miou_kept`` / ``void_share`` (with
        ``assign.void_k``: the labels off the void pixels, the share painted void), the choice
        diagnostics, cost, skips and time."""
        out: dict[str, float | None] = {}
        for name, matrix in self.confusions.items():
            confusion = ConfusionMatrix(len(matrix))
            confusion.matrix = matrix.astype(np.int64)
            out["pseudo_miou" if name == "chosen" else f"pseudo_miou_{name}"] = confusion.compute().miou if matrix.sum() else None
        kept, painted = self.confusions["kept"].sum(), self.confusions["chosen"].sum()
        out["void_share"] = 1.0 - kept / painted if kept else None  # only with assign.void_k
        return out | self.diagnostics.metrics() | {
            "mean_chosen_cost": self.chosen_cost_sum / max(self.boxes, 1),
            "skipped_images": float(sum(self.skipped.values())), "label_update_seconds": self.seconds,
            "assign_cache_mb": self.cache_mb}


CONFUSIONS = ("chosen", "eo_best", "oracle", "kept")


def summarize_round(ctx: WorkerContext, results: list, num_classes: int, started: float) -> tuple[RoundSummary, list[tuple[str, str | None]]]:
    """Every worker's image results, summed over the workers; and every (image id, skip reason)."""
    n = num_classes
    confusions = np.zeros((len(CONFUSIONS), n * n))
    diagnostics = ChoiceDiagnostics()
    for r in results:
        for row, name in enumerate(CONFUSIONS):
            for index, count in (r.confusion if name == "chosen" else r.reference_confusions.get(name, {})).items():
                confusions[row, index] += count
        if r.diagnostics is not None:
            diagnostics = diagnostics + r.diagnostics
    totals = ctx.all_reduce(np.array([sum(r.boxes for r in results), sum(r.chosen_cost_sum for r in results),
                                      *diagnostics.as_tuple()], dtype=np.float64))
    summed = ctx.all_reduce(confusions).reshape(len(CONFUSIONS), n, n)
    outcomes = [item for part in ctx.all_gather([(r.image_id, r.skipped) for r in results]) for item in part]
    labelled = sorted(i for i, why in outcomes if why is None)
    skipped = Counter(why for _, why in outcomes if why is not None)
    diagnostics = ChoiceDiagnostics.from_tuple(totals[2:])
    return RoundSummary(labelled, skipped, int(totals[0]), float(totals[1]), dict(zip(CONFUSIONS, summed)),
                        diagnostics, time.perf_counter() - started), outcomes


def label_round(
    ctx: WorkerContext, job: TrainingJob, model: torch.nn.Module | None, round_index: int,
    box_images: list[ImageAnnotation], dataset: SegmentationDataset, progress: bool, previous_round: int | None = None,
    cache: SplitAtomCache | None = None, precision: Precision = FP32, reported: set[tuple[str, str]] | None = None,
) -> RoundSummary:
    """One round over every box image: this worker's share through the network, all through the pool.

    The share goes through the network in batches of one image size, decoded (and its atom map split,
    unless ``cache`` holds it from an earlier round) in ``train.loader_workers`` processes; the network
    runs under ``precision``, and each image's costs are reduced, in float32, to per-atom means on the
    model's device. With ``lam`` 0 or no ``model`` (round 0) the pool takes E_o alone. A skipped image
    is logged the first time its reason is not in ``reported``.
    """
    started = time.perf_counter()
    reported = reported if reported is not None else set()
    pool, rule, train = job.pool, job.settings.rule, job.settings.train
    if pool is None:
        raise ValueError("label_round: the job has no label pool (the launcher sets one)")
    scorer = model if rule.lam != 0 else None
    mine = box_images[ctx.rank :: ctx.world]
    scored = [a for a in mine if scorer is not None and a.boxes]
    scored_ids = {a.image_id for a in scored}
    for ann in mine:  # E_o alone: nothing to compute on this side
        if ann.image_id not in scored_ids:
            pool.submit(round_index, ann.image_id, None, previous_round)
    cache = cache if cache is not None else SplitAtomCache(0)
    batches = label_round_batches(dataset, job.proposal_store, scored, cache, train.batch_per_worker(ctx.world),
                                  loader_workers(train.loader_workers, ctx.device))
    queued: list[tuple[list[str], AtomSums]] = []  # a batch's sums travel to the host while the next is queued
    failed: list[str] = []

    def submit_queued() -> None:
        for image_ids, sums in queued:
            for image_id, means in zip(image_ids, sums.means()):
                pool.submit(round_index, image_id, means, previous_round)
        for image_id in failed:  # a missing or corrupt proposal file: the actor reports the image as skipped
            pool.submit(round_index, image_id, None, previous_round)

    with untuned_cudnn(), progress_bar(total=len(scored), desc=f"labels[round {round_index}]", leave=False,
                                        enabled=progress, unit="img") as bar:
        for items in batches:
            launched = []
            for group in same_size_groups(items):
                image_ids = [scored[item.index].image_id for item in group]
                for item, image_id in zip(group, image_ids):
                    if item.split is not None:
                        cache.put(image_id, item.split)
                splits = [split_of(item, image_id, cache) for item, image_id in zip(group, image_ids)]
                assert scorer is not None  # nothing is scored without it
                log_probs = batch_log_probs(scorer, device_images(group, ctx.device), ctx.device, rule.score_flip,
                                            precision)
                launched.append((image_ids, reduce_to_atoms(splits, log_probs, rule.pixel_cost)))
            submit_queued()
            queued, failed = launched, [scored[item.index].image_id for item in items if item.image is None]
            bar.update(len(items))
        submit_queued()
    summary, outcomes = summarize_round(ctx, pool.collect(), dataset.num_classes, started)
    summary.cache_mb = pool.cache_mb() if ctx.rank == 0 else None
    for image_id, why in outcomes:
        if why is not None and ctx.rank == 0 and (image_id, why) not in reported:
            reported.add((image_id, why))
            log.warning("%s: %s; skipped in round %d (logged once: every round counts it in skipped_images)",
                        image_id, why, round_index)
    return summary


def split_of(item: LabelItem, image_id: str, cache: SplitAtomCache) -> SplitAtoms:
    """The item's split atom map: made by the loader this round, else the one cached from an earlier round."""
    split = item.split if item.split is not None else cache.get(image_id)
    if split is None:  # the loader splits every image the cache lacked when the round began
        raise RuntimeError(f"{image_id}: no split atom map, neither made this round nor cached")
    return split
