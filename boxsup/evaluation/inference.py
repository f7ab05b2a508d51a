"""Test-time prediction: softmax probabilities averaged over image scales, optional dense CRF."""

from __future__ import annotations

from typing import Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boxsup.evaluation.crf import CRFParams, dense_crf
from boxsup.models.fcn import normalize_image

MULTI_SCALE = (0.8, 1.0, 1.2)


def predict_probs(
    model: nn.Module, image_uint8: np.ndarray, scales: Sequence[float] = (1.0,), device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class probabilities (C, H, W) for an RGB uint8 image (H, W, 3), averaged over ``scales``.

    At each scale the image is resized, run through the model (which must already be on ``device``),
    and its logits resized back to (H, W) before the softmax. Use :data:`MULTI_SCALE` for the
    paper-style multi-scale test. The model runs in eval mode; its previous mode is restored.
    """
    image = normalize_image(image_uint8).unsqueeze(0).to(device)
    return predict_probs_batch(model, image, scales)[0].cpu().numpy().astype(np.float32)


def predict_probs_batch(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Class probabilities (N, C, H, W) for a normalised batch (N, 3, H, W) on the model's device.

    What :func:`predict_probs` does for one image, for a batch of images of one size at once.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return cast(torch.Tensor, sum(_probs_at_scale(model, images, scale) for scale in scales)) / len(scales)
    finally:
        model.train(was_training)


def predict_label_map(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    crf: bool = False,
    device: str | torch.device = "cpu",
    crf_params: CRFParams | None = None,
) -> np.ndarray:
    """Label map (H, W) uint8 of one RGB uint8 image: :func:`predict_label_maps` for a batch of one."""
    return predict_label_maps(model, [image], scales, crf, device, crf_params)[0]


def predict_label_maps(
    model: nn.Module,
    images: Sequence[np.ndarray],
    scales: Sequence[float] = (1.0,),
    crf: bool = False,
    device: str | torch.device = "cpu",
    crf_params: CRFParams | None = None,
) -> np.ndarray:
    """Label maps (N, H, W) uint8 for RGB uint8 images (H, W, 3) of one size, run as one batch: the
    argmax of the softmax averaged over ``scales``, refined per image by :func:`dense_crf` if ``crf``
    (with ``crf_params``, default DeepLab's)."""
    batch = torch.stack([normalize_image(image) for image in images]).to(device)
    probs = predict_probs_batch(model, batch, scales).float().cpu().numpy()
    if crf:
        probs = np.stack([dense_crf(image, p, crf_params) for image, p in zip(images, probs)])
    return probs.argmax(axis=1).astype(np.uint8)


def _probs_at_scale(model: nn.Module, image: torch.Tensor, scale: float) -> torch.Tensor:
    size = image.shape[-2:]
    scaled = image
    if scale != 1.0:
        scaled_size = [max(1, round(side * scale)) for side in size]
        scaled = F.interpolate(image, size=scaled_size, mode="bilinear", align_corners=False)
    logits = F.interpolate(model(scaled).float(), size=size, mode="bilinear", align_corners=False)  # float32 under autocast
    return logits.softmax(dim=1)
