"""The torch Dataset of one training epoch: images with this round's targets, cropped and flipped."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from boxsup.data.annotations import IGNORE, ImageAnnotation, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.dataset import SegmentationDataset
from boxsup.models import normalize_image


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
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


class TrainingSet(Dataset):
    """(image, target) pairs: GT masks for mask-supervised images, the label store's maps for the rest.

    Crops and flips draw from a stream keyed on (seed, epoch, index), so an epoch's batches are the
    same whatever the number of loader workers.
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
        self.epoch = 0
        self.label_round = 0

    def __len__(self) -> int:
        return len(self.annotations)

    def target(self, ann: ImageAnnotation) -> np.ndarray:
        if ann.supervision == Supervision.MASK:
            return self.dataset.mask(ann.image_id)
        return self.labels.read(self.label_round, ann.image_id)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ann = self.annotations[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, target = random_crop_flip(self.dataset.image(ann.image_id), self.target(ann), self.crop_size, rng)
        return normalize_image(image), torch.from_numpy(target.astype(np.int64))
