"""The torch Dataset of the training epochs (images with a round's targets, cropped and flipped) and its sampler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from boxsup.data.annotations import IGNORE, ImageAnnotation, Supervision
from boxsup.data.dataset import SegmentationDataset
from boxsup.data.label_store import LabelStore
from boxsup.errors import BoxSupError

GPU_LOADER_WORKERS = 4  # decoding and cropping beside each GPU worker keeps it busy at VOC size


def loader_workers(setting: int | None, device: torch.device) -> int:
    """``train.loader_workers``, or when null: ``GPU_LOADER_WORKERS`` processes on a GPU, none on CPU (where
    the cores are the Train workers' own and extra processes would only compete with them)."""
    if setting is not None:
        return setting
    return GPU_LOADER_WORKERS if device.type == "cuda" else 0


def random_crop_flip(
    image: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pad (image with its mean, target with IGNORE) to at least size x size, crop there, maybe flip."""
    h, w = target.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        fill = image.reshape(-1, 3).mean(0).astype(np.uint8)
        padded = np.empty((h + ph, w + pw, 3), np.uint8)
        padded[:] = fill
        padded[:h, :w] = image
        image = padded
        target = np.pad(target, ((0, ph), (0, pw)), constant_values=IGNORE)
        h, w = target.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    image, target = image[y : y + size, x : x + size], target[y : y + size, x : x + size]
    if rng.random() < 0.5:
        image, target = image[:, ::-1], target[:, ::-1]
    return np.require(image, requirements=("C", "W")), np.require(target, requirements=("C", "W"))  # own, writable copies


class EpochDraw(NamedTuple):
    """One item of an epoch: the image (index into the run's training annotations), the label round
    its target comes from, and the random stream of its crop and flip, keyed on (seed, epoch, stream)."""

    epoch: int
    label_round: int
    image: int
    stream: int


class TrainingSet(Dataset):
    """(image, target) pairs: GT masks for mask-supervised images, the label store's maps for the rest.

    Indexed by ``EpochDraw`` keys (from ``EpochSampler``), so the set itself never changes during a
    run and its loader processes can persist across epochs. Images come as uint8 (3, S, S) crops: the
    training step normalises them on its device. Crops and flips draw from a stream keyed on (seed,
    epoch, stream), so an epoch's batches are the same whatever the number of loader workers.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        annotations: list[ImageAnnotation],
        labels: LabelStore,
        crop_size: int,
        seed: int,
    ):
        self.dataset = dataset
        self.annotations = annotations
        self.labels = labels
        self.crop_size = crop_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.annotations)

    def target(self, ann: ImageAnnotation, label_round: int) -> np.ndarray:
        if ann.supervision == Supervision.MASK:
            mask = self.dataset.mask(ann.image_id)
            if mask is None:  # supervision gives masks only to images that have one; a reader that lost it
                raise BoxSupError(f"{self.dataset.mask_location(ann.image_id)}: {ann.image_id} trains on its mask, "
                                  "but the mask cannot be read")
            return mask
        return self.labels.read(label_round, ann.image_id)

    def __getitem__(self, draw: EpochDraw) -> tuple[torch.Tensor, torch.Tensor]:
        ann = self.annotations[draw.image]
        rng = np.random.default_rng([self.seed, draw.epoch, draw.stream])
        image, target = random_crop_flip(self.dataset.image(ann.image_id), self.target(ann, draw.label_round),
                                         self.crop_size, rng)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(target.astype(np.int64))


class EpochSampler(Sampler[EpochDraw]):
    """This rank's share of an epoch's images (``start_epoch``), shuffled by (seed, epoch) and split over
    ranks as ``DistributedSampler`` does; yields the ``EpochDraw`` keys of ``TrainingSet``."""

    def __init__(self, world: int, rank: int, seed: int):
        self.world, self.rank, self.seed = world, rank, seed
        self.epoch, self.label_round = 0, 0
        self.images: list[int] = []

    def start_epoch(self, epoch: int, label_round: int, images: list[int]) -> None:
        """The epoch's images (indices into the training annotations, in a fixed order) and label round."""
        self.epoch, self.label_round, self.images = epoch, label_round, list(images)

    def _positions(self) -> DistributedSampler:
        positions: DistributedSampler = DistributedSampler(
            range(len(self.images)), num_replicas=self.world, rank=self.rank, shuffle=True,  # type: ignore[arg-type]
            seed=self.seed)  # it only takes the length of its "dataset": a range of positions is one
        positions.set_epoch(self.epoch)
        return positions

    def __iter__(self) -> Iterator[EpochDraw]:
        for position in self._positions():
            yield EpochDraw(self.epoch, self.label_round, self.images[position], position)

    def __len__(self) -> int:
        return len(self._positions())
