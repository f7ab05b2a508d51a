"""One label-update round over the box-supervised training images (the E-step)."""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
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
from boxsup.trainers.epoch import pixel_costs

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


class BoxedPoolCache:
    """Each image's box-refined candidate pool, built once from the proposal store and kept.

    Pools and their E_o never change during a run, so later rounds only pay for E_r. At most
    ``capacity`` images are kept (least recently used dropped) to bound memory on large datasets.
    """

    def __init__(self, store: ProposalStore, capacity: int = 4096):
        self.store = store
        self.capacity = capacity
        self._pools: OrderedDict[str, BoxedPool] = OrderedDict()

    def get(self, ann: ImageAnnotation) -> BoxedPool:
        pool = self._pools.pop(ann.image_id, None)
        if pool is None:
            pool = BoxedPool.build(self.store.load(ann.image_id), ann.boxes_array(), ann.labels_array())
        self._pools[ann.image_id] = pool
        if len(self._pools) > self.capacity:
            self._pools.popitem(last=False)
        return pool


def update_labels(
    round_index: int,
    annotations: list[ImageAnnotation],
    dataset: VOCDataset,
    pools: BoxedPoolCache,
    labels: LabelStore,
    model: torch.nn.Module | None,
    lam: float,
    k: int,
    seed: int,
    device: torch.device,
    pixel_cost: str = "error",
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
            boxed = pools.get(ann)
        except EmptyPoolError:
            stats.skipped["empty candidate pool"] += 1
            log.warning("%s: empty candidate pool; skipped in round %d", ann.image_id, round_index)
            continue
        costs = pixel_costs(model, dataset.image(ann.image_id), device, pixel_cost) if use_network else None
        loss_sums = boxed.loss_sums(costs) if costs is not None else None
        result = assign_labels(boxed, loss_sums, lam, k, image_rng(seed, round_index, ann.image_id))
        labels.write(round_index, ann.image_id, result.label_map)
        stats.images_done += 1
        stats.labelled.append(ann.image_id)
        stats.chosen_cost_sum += float(result.chosen_cost.sum())
        stats.boxes += len(result.chosen)
        if ann.has_mask:
            stats.confusion.update(result.label_map, dataset.mask(ann.image_id))
    return stats
