"""What a worker's label round feeds the network and the per-atom reduction with.

Each box image needs its decoded picture and its atom map split by its boxes. Both are made in
DataLoader workers (``train.loader_workers``), batched by image size so that the network sees no
padding (a batch gives every image the numbers a batch of one gives it). The split map is kept
on the worker between rounds (``SplitAtomCache``), cropped to the boxes' hull and with its atom
areas, so later rounds neither read the proposal file nor split again.

The reduction to per-atom means (``reduce_to_atoms``) runs where the costs are: on a GPU one
float64 scatter-add per batch, so only A x K numbers per image leave the device, copied while the
next batch is queued; on the CPU one ``np.bincount`` per label, the same sums as
``boxsup.assign.assign.atom_mean_costs``. Only atoms inside a box are
read by E_r (``boxsup.assign.costs``), so pixels outside the boxes' hull are skipped: an atom
inside a box gets exactly the mean the whole-image reduction gives it, an atom outside every box
gets a partial mean (or 0) that nothing reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boxsup.assign.assign import loss_labels_for
from boxsup.data.annotations import ImageAnnotation
from boxsup.data.dataset import SegmentationDataset
from boxsup.errors import BoxSupError
from boxsup.models import normalize_batch
from boxsup.proposals.pool import split_atoms_by_boxes
from boxsup.proposals.store import ProposalStore
from boxsup.trainers.epoch import costs_from_log_probs
from boxsup.utils.byte_cache import ByteBudgetCache


@dataclass
class SplitAtoms:
    """An image's atom map split by its boxes, cropped to the boxes' hull, and every refined atom's area."""

    atoms: np.ndarray  # (y1 - y0, x1 - x0) uint16 (int32 beyond 65,536 atoms): refined atom ids in the hull
    areas: np.ndarray  # (A,) int64 pixel count of each refined atom over the whole image
    hull: tuple[int, int, int, int]  # (y0, y1, x0, x1), end-exclusive
    loss_labels: np.ndarray  # (K,) the labels reduced: background, then the box classes

    @classmethod
    def build(cls, atoms: np.ndarray, ann: ImageAnnotation) -> "SplitAtoms":
        """Split a proposal file's atom map by the annotation's boxes."""
        boxes = ann.boxes_array().reshape(-1, 4)
        refined = split_atoms_by_boxes(atoms, boxes)[0]
        areas = np.bincount(refined.ravel(), minlength=int(refined.max()) + 1)
        h, w = refined.shape
        y0, y1 = max(int(boxes[:, 1].min()), 0), min(int(boxes[:, 3].max()), h)
        x0, x1 = max(int(boxes[:, 0].min()), 0), min(int(boxes[:, 2].max()), w)
        dtype = np.uint16 if len(areas) <= 1 << 16 else np.int32
        crop = np.ascontiguousarray(refined[y0:y1, x0:x1], dtype=dtype)
        return cls(crop, areas, (y0, y1, x0, x1), loss_labels_for(ann.labels_array()))

    @property
    def nbytes(self) -> int:
        return self.atoms.nbytes + self.areas.nbytes + self.loss_labels.nbytes

    def mean_costs(self, log_probs: torch.Tensor, kind: str = "error") -> np.ndarray:
        """Per-atom means (A, K) float16 of e(p, l) for ``loss_labels``, from one image's log P (C, H, W).

        What ``atom_mean_costs`` computes from the whole cost map, here from the K labels' rows in
        the hull, on the tensor's device; only the (A, K) sums leave it.
        """
        return reduce_to_atoms([self], log_probs[None], kind).means()[0]

    def hull_costs(self, log_probs: torch.Tensor, kind: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """e(p, l) (K, pixels of the hull) of the ``loss_labels`` rows (``rows``: the same, already on the
        tensor's device), from one image's log P (C, H, W)."""
        y0, y1, x0, x1 = self.hull
        rows = torch.as_tensor(self.loss_labels, device=log_probs.device) if rows is None else rows
        hull = log_probs.index_select(0, rows)[:, y0:y1, x0:x1].contiguous()
        return costs_from_log_probs(hull, kind).reshape(len(rows), -1)


@dataclass
class AtomSums:
    """Per-atom cost sums of a batch of images, on their way to the host: each image's (K, A) block,
    one after another, in float64 (on a GPU, copied asynchronously: :meth:`means` waits for it)."""

    splits: list[SplitAtoms]
    sums: torch.Tensor  # (sum of K x A,) float64 on the host
    copied: torch.cuda.Event | None = None

    def means(self) -> list[np.ndarray]:
        """Each image's per-atom means (A, K) float16."""
        if self.copied is not None:
            self.copied.synchronize()
        out, start = [], 0
        flat = self.sums.numpy()
        for split in self.splits:
            k, a = len(split.loss_labels), len(split.areas)
            block = flat[start : start + k * a].reshape(k, a).T
            out.append((block / np.maximum(split.areas, 1)[:, None]).astype(np.float16))
            start += k * a
        return out


def reduce_to_atoms(splits: Sequence[SplitAtoms], log_probs: torch.Tensor, kind: str = "error") -> AtomSums:
    """The per-atom sums of e(p, l) of a batch of images (log P (N, C, H, W), one ``SplitAtoms`` each).

    On a CPU one ``np.bincount`` per image and label (it beats torch's scatter-add there). On a GPU
    one scatter-add for the whole batch, over an index that gives every (image, label, atom) its
    own slot, then one asynchronous copy to pinned host memory: the host does not wait for the
    device until :meth:`AtomSums.means`, so the next batch can be queued first.
    """
    splits = list(splits)
    if log_probs.device.type == "cpu":
        parts = []
        for split, image_log_probs in zip(splits, log_probs):
            flat = split.atoms.ravel()
            costs = split.hull_costs(image_log_probs, kind).numpy()
            parts += [np.bincount(flat, weights=layer, minlength=len(split.areas)) for layer in costs]
        return AtomSums(splits, torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0)))
    device = log_probs.device
    # every host-to-device copy from pinned memory and asynchronous: the host queues, never waits
    atoms = torch.from_numpy(np.concatenate([s.atoms.ravel().astype(np.int32) for s in splits])).pin_memory()
    labels = torch.from_numpy(np.concatenate([s.loss_labels for s in splits]).astype(np.int64)).pin_memory()
    atoms_on_device = atoms.to(device, non_blocking=True).long()
    labels_on_device = labels.to(device, non_blocking=True)
    values, index, start, offset, first_label = [], [], 0, 0, 0
    for split, image_log_probs in zip(splits, log_probs):
        k, a, pixels = len(split.loss_labels), len(split.areas), split.atoms.size
        rows = labels_on_device[first_label : first_label + k]
        values.append(split.hull_costs(image_log_probs, kind, rows).double().reshape(-1))
        slots = torch.arange(k, device=device).view(k, 1) * a + atoms_on_device[start : start + pixels].view(1, -1)
        index.append((slots + offset).reshape(-1))
        start, offset, first_label = start + pixels, offset + k * a, first_label + k
    sums = torch.zeros(offset, dtype=torch.float64, device=device).scatter_add_(0, torch.cat(index), torch.cat(values))
    host = torch.empty(offset, dtype=torch.float64, pin_memory=True)
    host.copy_(sums, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return AtomSums(splits, host, copied)


class SplitAtomCache(ByteBudgetCache[SplitAtoms]):
    """Split atom maps kept on a worker across rounds, within ``max_bytes`` (kept once full, see
    ``ByteBudgetCache``). A map is 2 bytes per pixel of the boxes' hull (375 KB for a whole VOC image)."""


@dataclass
class LabelItem:
    """One box image ready for the network: its normalised picture and split atoms, or why it has none."""

    index: int
    image: torch.Tensor | None  # (H, W, 3) uint8 RGB: a batch goes to the device as a quarter of float32's bytes
    split: SplitAtoms | None  # None: the cached one is used (or the proposal file failed: ``error``)
    error: str | None = None


class LabelRoundImages(Dataset):
    """Box images of a label round: the picture decoded and, where ``need_split[i]``, the atom map
    read from the proposal store and split by the boxes. Meant for DataLoader workers."""

    def __init__(self, dataset: SegmentationDataset, proposal_store: str, annotations: Sequence[ImageAnnotation],
                 need_split: Sequence[bool]):
        self.dataset, self.proposal_store = dataset, proposal_store
        self.annotations, self.need_split = list(annotations), list(need_split)
        self._store: ProposalStore | None = None

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> LabelItem:
        ann = self.annotations[index]
        split = None
        if self.need_split[index]:
            if self._store is None:
                self._store = ProposalStore(self.proposal_store)
            try:  # one read, no existence check first: a request saved per image on object stores
                atoms = self._store.load_atoms(ann.image_id, expected_shape=(ann.height, ann.width))
            except BoxSupError as exc:  # the actor reports the image as skipped
                return LabelItem(index, None, None, str(exc))
            split = SplitAtoms.build(atoms, ann)
        return LabelItem(index, torch.from_numpy(np.array(self.dataset.image(ann.image_id), order="C")), split)


def size_batches(annotations: Sequence[ImageAnnotation], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most ``batch_size`` images of one size, each size's images in order."""
    order = sorted(range(len(annotations)), key=lambda i: (annotations[i].height, annotations[i].width, i))
    batches = []
    for _, group in groupby(order, key=lambda i: (annotations[i].height, annotations[i].width)):
        members = list(group)
        batches += [members[start : start + batch_size] for start in range(0, len(members), batch_size)]
    return sorted(batches, key=lambda b: b[0])  # roughly the given order: the first images first


def label_round_batches(dataset: SegmentationDataset, proposal_store: str, annotations: Sequence[ImageAnnotation],
                        cache: SplitAtomCache, batch_size: int, workers: int) -> Iterator[list[LabelItem]]:
    """Batches of ``LabelItem`` (one image size each), made by ``workers`` loader processes (0: here)."""
    need = [cache.get(a.image_id) is None for a in annotations]
    images = LabelRoundImages(dataset, proposal_store, annotations, need)
    loader = DataLoader(images, batch_sampler=size_batches(annotations, max(1, batch_size)), num_workers=workers,
                        collate_fn=list)
    yield from loader


def device_images(items: Sequence[LabelItem], device: torch.device) -> torch.Tensor:
    """The items' pictures (one size) as a normalised float32 batch (N, 3, H, W), channels-last, on
    ``device``: they travel as uint8, from pinned memory without waiting where the device is a GPU."""
    pictures = [item.image for item in items]
    if any(picture is None for picture in pictures):
        raise ValueError("device_images: every item needs its picture (same_size_groups leaves out those without)")
    batch = torch.stack(cast(list[torch.Tensor], pictures))
    if device.type == "cuda":
        batch = batch.pin_memory()
    return normalize_batch(batch.to(device, non_blocking=True).permute(0, 3, 1, 2))


def same_size_groups(items: list[LabelItem]) -> list[list[LabelItem]]:
    """The items with an image, grouped by image size (a batch from ``size_batches`` is one group
    unless a decoded image differs from its annotation's size)."""
    ready = sorted((i for i in items if i.image is not None), key=lambda i: (_size(i), i.index))
    return [list(g) for _, g in groupby(ready, key=_size)]


def _size(item: LabelItem) -> tuple[int, ...]:
    return tuple(item.image.shape) if item.image is not None else ()
