"""Tests for dense CRF refinement and test-time prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boxsup.evaluation.crf import dense_crf
from boxsup.evaluation.inference import MULTI_SCALE, predict_label_map, predict_probs
from boxsup.models import build_model


@pytest.fixture()
def two_regions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 48x64 image with two flat colours, its true labels and noisy 2-class probabilities."""
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 64), dtype=np.int64)
    labels[:, 28:] = 1
    image = np.where(labels[..., None] == 1, [200, 40, 40], [30, 60, 180]).astype(np.uint8)
    fg = np.clip(np.where(labels == 1, 0.65, 0.35) + rng.normal(0, 0.25, labels.shape), 0.01, 0.99)
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    return image, labels, probs


def test_crf_improves_noisy_probabilities(two_regions) -> None:
    image, labels, probs = two_regions
    refined = dense_crf(image, probs)
    before = (probs.argmax(0) == labels).mean()
    after = (refined.argmax(0) == labels).mean()
    assert before < 0.9 and after > before and after > 0.98


def test_crf_output_is_a_distribution(two_regions) -> None:
    image, _, probs = two_regions
    refined = dense_crf(image, probs, iterations=2, bi_sxy=20.0)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)


def test_crf_accepts_non_contiguous_inputs(two_regions) -> None:
    image, _, probs = two_regions
    refined = dense_crf(image[:, ::-1], probs[:, :, ::-1].astype(np.float64))
    assert refined.shape == probs.shape


def test_crf_rejects_mismatched_image(two_regions) -> None:
    image, _, probs = two_regions
    with pytest.raises(ValueError, match="does not match"):
        dense_crf(image[:10], probs)


def test_predict_probs_multi_scale() -> None:
    torch.manual_seed(0)
    model = build_model("small", num_classes=4).train()
    image = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    probs = predict_probs(model, image, scales=MULTI_SCALE)
    assert probs.shape == (4, 37, 53)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert model.training


def test_predict_label_map_with_crf() -> None:
    model = build_model("small", num_classes=3)
    image = np.random.default_rng(2).integers(0, 256, size=(33, 40, 3), dtype=np.uint8)
    labels = predict_label_map(model, image, crf=True)
    assert labels.shape == (33, 40) and labels.dtype == np.uint8 and labels.max() < 3
