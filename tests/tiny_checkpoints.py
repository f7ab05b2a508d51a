"""A tiny trained-looking checkpoint (small FCN, random weights) and test images, without a training run."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from boxsup.config import DEFAULTS
from boxsup.models import build_model

CLASSES = ["cat", "dog"]


def save_tiny_checkpoint(path: Path, scales: tuple[float, ...] = (1.0,), seed: int = 0) -> Path:
    """A ``checkpoint.pt`` as ``boxsup train`` writes it: small backbone, 2 classes, ``eval.scales``."""
    torch.manual_seed(seed)
    config = copy.deepcopy(DEFAULTS)
    config["model"].update(backbone="small", weights="none")
    config["eval"]["scales"] = list(scales)
    network = build_model("small", len(CLASSES) + 1)
    with torch.no_grad():  # larger class scores than the init's, so the label maps show structure
        network.classifier.weight.mul_(50)
    torch.save({"model": network.state_dict(), "config": config, "classes": CLASSES}, path)
    return path


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, suffix: str = ".jpg") -> list[Path]:
    """RGB images of the given (width, height), named img<i><suffix>, with a few flat blobs on noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
            image[y : y + height // 2, x : x + width // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        path = folder / f"img{i}{suffix}"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
