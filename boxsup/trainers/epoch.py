"""One epoch of SGD on the current label maps, and the per-pixel losses a label update needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from boxsup.data.annotations import IGNORE
from boxsup.models import normalize_batch, normalize_image
from boxsup.models.kernels import pixel_cross_entropy
from boxsup.models.precision import FP32, Precision
from boxsup.utils.progress import progress_bar


@dataclass(frozen=True)
class EpochLoss:
    """An epoch's summed per-image loss, its image count, and the first step whose loss was NaN or
    infinite (-1: none), as numbers that sum over data-parallel ranks."""

    total: float
    images: int
    first_bad_step: int

    @property
    def mean(self) -> float:
        return self.total / max(self.images, 1)


def train_one_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    progress: bool = True,
    precision: Precision = FP32,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochLoss:
    """SGD over every batch once, on the mean per-pixel cross-entropy (IGNORE pixels left out).

    ``batches`` hold uint8 images (N, 3, H, W), normalised here on ``device``, and int64 targets.
    The forward pass runs under ``precision``'s autocast; with a ``scaler`` (fp16) the loss is scaled.
    The loss and the first step with a NaN or infinite loss are kept on the device and read once at
    the end, so the GPU never waits for the host during the epoch. Batches go in channels-last,
    the layout ``on_device`` gives the weights.
    """
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    count = 0
    for step, (images, targets) in enumerate(progress_bar(batches, desc="train", leave=False, enabled=progress, unit="batch")):
        images = normalize_batch(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        value = sgd_step(model, optimizer, images, targets, precision, scaler)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(value), step, first_bad)
        total += value * len(images)
        count += len(images)
    return EpochLoss(float(total), count, int(first_bad))


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor,
             precision: Precision = FP32, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One step on a batch already on the model's device: forward under ``precision``, float32 cross-entropy
    (IGNORE pixels left out), backward (scaled when there is a ``scaler``), update; the loss, detached."""
    with precision.autocast(images.device):
        logits = model(images)
    loss = pixel_cross_entropy(logits, targets, IGNORE)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def pixel_costs(model: torch.nn.Module, image: np.ndarray, device: torch.device, kind: str = "error",
                flip: bool = False) -> np.ndarray:
    """e(p, l) for every class and pixel, (num_classes, H, W) float32, as the label update uses it.

    ``kind`` "error": 1 - P(l | p), the expected 0-1 error of labelling p with l, bounded in [0, 1];
    "xent": -log P(l | p), the training loss itself, unbounded.
    """
    log_probs = batch_log_probs(model, normalize_image(image)[None], device, flip)[0]
    return costs_from_log_probs(log_probs, kind).cpu().numpy()


def batch_log_probs(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                    flip: bool = False, precision: Precision = FP32) -> torch.Tensor:
    """log P(l | p) of a batch of normalised images of one size (N, 3, H, W): (N, num_classes, H, W)
    float32, left on ``device``. Per image the same numbers as a batch of one (no padding).

    ``flip``: P is the mean of the network's P on the image and, mirrored back, on its mirror image
    (horizontal flip, the training augmentation), which steadies a young network's masks. The
    network runs under ``precision``; the softmax and the mean are float32.
    """
    model.eval()
    with torch.no_grad():
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if flip:
            images = torch.cat([images, images.flip(-1)])
        with precision.autocast(device):
            logits = model(images)
        log_probs = F.log_softmax(logits.float(), dim=1)
        if not flip:
            return log_probs
        plain, mirrored = log_probs.chunk(2)
        return torch.logaddexp(plain, mirrored.flip(-1)) - math.log(2.0)  # log of the mean P, no underflow


def costs_from_log_probs(log_probs: torch.Tensor, kind: str = "error") -> torch.Tensor:
    """e(p, l) from log P(l | p), elementwise, on the tensor's device (``kind`` as in ``pixel_costs``)."""
    with torch.no_grad():
        return -log_probs if kind == "xent" else 1.0 - log_probs.exp()
