"""One epoch of SGD on the current label maps, and the per-pixel losses a label update needs."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from boxsup.data.annotations import IGNORE
from boxsup.models import normalize_image


def train_one_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    progress: bool = True,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """SGD over every batch once; returns the mean per-pixel cross-entropy (IGNORE pixels left out).

    With a ``scaler`` (CUDA only) the forward pass runs in float16 autocast (AMP).
    """
    model.train()
    total, count = 0.0, 0
    for images, targets in tqdm(batches, desc="train", leave=False, disable=not progress, unit="batch"):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
            loss = F.cross_entropy(model(images).float(), targets, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += float(loss.detach()) * len(images)
        count += len(images)
    return total / max(count, 1)


def pixel_costs(model: torch.nn.Module, image: np.ndarray, device: torch.device, kind: str = "error",
                flip: bool = False) -> np.ndarray:
    """e(p, l) for every class and pixel, (num_classes, H, W) float32, as the label update uses it.

    ``kind`` "error": 1 - P(l | p), the expected 0-1 error of labelling p with l, bounded in [0, 1];
    "xent": -log P(l | p), the training loss itself, unbounded.
    """
    log_probs = batch_log_probs(model, normalize_image(image)[None], device, flip)[0]
    return costs_from_log_probs(log_probs, kind).cpu().numpy()


def batch_log_probs(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                    flip: bool = False) -> torch.Tensor:
    """log P(l | p) of a batch of normalised images of one size (N, 3, H, W): (N, num_classes, H, W)
    float32, left on ``device``. Per image the same numbers as a batch of one (no padding).

    ``flip``: P is the mean of the network's P on the image and, mirrored back, on its mirror image
    (horizontal flip, the training augmentation), which steadies a young network's masks.
    """
    model.eval()
    with torch.no_grad():
        images = images.to(device, non_blocking=True)
        if not flip:
            return F.log_softmax(model(images).float(), dim=1)
        plain, mirrored = F.log_softmax(model(torch.cat([images, images.flip(-1)])).float(), dim=1).chunk(2)
        return torch.logaddexp(plain, mirrored.flip(-1)) - math.log(2.0)  # log of the mean P, no underflow


def costs_from_log_probs(log_probs: torch.Tensor, kind: str = "error") -> torch.Tensor:
    """e(p, l) from log P(l | p), elementwise, on the tensor's device (``kind`` as in ``pixel_costs``)."""
    with torch.no_grad():
        return -log_probs if kind == "xent" else 1.0 - log_probs.exp()
