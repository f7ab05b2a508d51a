"""One epoch of SGD on the current label maps, and the per-pixel losses a label update needs."""

from __future__ import annotations

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


def pixel_costs(model: torch.nn.Module, image: np.ndarray, device: torch.device, kind: str = "error") -> np.ndarray:
    """e(p, l) for every class and pixel, (num_classes, H, W) float32, as the label update uses it.

    ``kind`` "error": 1 - P(l | p), the expected 0-1 error of labelling p with l, bounded in [0, 1];
    "xent": -log P(l | p), the training loss itself, unbounded.
    """
    model.eval()
    with torch.no_grad():
        log_probs = F.log_softmax(model(normalize_image(image)[None].to(device)).float(), dim=1)[0]
        costs = -log_probs if kind == "xent" else 1.0 - log_probs.exp()
        return costs.cpu().numpy()
