"""One label-update round over the box-supervised training images (the E-step)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from boxsup.assign import BoxedPool, EmptyPoolError, assign_labels, image_rng
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.voc import VOCDataset
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.proposals.store import ProposalStore
from boxsup.trainers.epoch import pixel_losses

log = logging.getLogger(__name__)


@dataclass
class RoundStats:
    """What a label-update round did; ``confusion`` compares label maps with the hidden GT masks."""

    round_index: int
    images_done: int = 0
    skipped: Counter = field(default_factory=Counter)
    chosen_cost_sum: float = 0.0
    boxes: int = 0
    confusion: ConfusionMatrix | None = None
    labelled: list[str] = field(default_factory=list)  # ids that received a label map this round

    @property
    def mean_chosen_cost(self) -> float:
        return self.chosen_cost_sum / max(self.boxes, 1)

    @property
    def pseudo_miou(self) -> float | None:
        if self.confusion is None or self.confusion.matrix.sum() == 0:
            return None
        return self.confusion.compute().miou


def update_labels(
    round_index: int,
    annotations: list[ImageAnnotation],
    dataset: VOCDataset,
    proposals: ProposalStore,
    labels: LabelStore,
    model: torch.nn.Module | None,
    lam: float,
    k: int,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> RoundStats:
    """Assign a candidate to every box of every box-supervised image and write the label maps.

    ``model`` None (round 0) means E_o alone. An image whose pool is empty, or that has no box,
    is skipped, counted and logged; it keeps no label map this round and sits out the epoch.
    """
    stats = RoundStats(round_index, confusion=ConfusionMatrix(dataset.num_classes))
    use_network = model is not None and lam != 0
    for ann in tqdm(annotations, desc=f"labels[round {round_index}]", leave=False, disable=not progress, unit="img"):
        if ann.supervision != Supervision.BOX:
            continue
        if not ann.boxes:
            stats.skipped["no box"] += 1
            log.warning("%s: no valid box; skipped in round %d", ann.image_id, round_index)
            continue
        try:
            boxed = BoxedPool.build(proposals.load(ann.image_id), ann.boxes_array(), ann.labels_array())
        except EmptyPoolError:
            stats.skipped["empty candidate pool"] += 1
            log.warning("%s: empty candidate pool; skipped in round %d", ann.image_id, round_index)
            continue
        loss_sums = boxed.loss_sums(pixel_losses(model, dataset.image(ann.image_id), device)) if use_network else None
        result = assign_labels(boxed, loss_sums, lam, k, image_rng(seed, round_index, ann.image_id))
        labels.write(round_index, ann.image_id, result.label_map)
        stats.images_done += 1
        stats.labelled.append(ann.image_id)
        stats.chosen_cost_sum += float(result.chosen_cost.sum())
        stats.boxes += len(result.chosen)
        if ann.has_mask:
            stats.confusion.update(result.label_map, dataset.mask(ann.image_id))
    return stats
