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
) -> float:
    """SGD over every batch once; returns the mean per-pixel cross-entropy (IGNORE pixels left out)."""
    model.train()
    total, count = 0.0, 0
    for images, targets in tqdm(batches, desc="train", leave=False, disable=not progress, unit="batch"):
        images, targets = images.to(device), targets.to(device)
        loss = F.cross_entropy(model(images), targets, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(images)
        count += len(images)
    return total / max(count, 1)


def pixel_losses(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    """e(p, l) = -log softmax(X(p))_l for every class and pixel, (num_classes, H, W) float32."""
    model.eval()
    with torch.no_grad():
        logits = model(normalize_image(image)[None].to(device))
        return (-F.log_softmax(logits.float(), dim=1))[0].cpu().numpy()
