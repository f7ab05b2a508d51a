"""Confusion-matrix metrics on hand-checked label maps."""

import numpy as np

from boxsup.evaluation.metrics import ConfusionMatrix


def test_miou_pixel_accuracy_and_ignore():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    prediction = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(prediction, target)
    scores = cm.compute()
    # class 0: tp 3, fp 1, fn 1 -> 3/5; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2 absent everywhere
    np.testing.assert_allclose(scores.class_iou[:2], [0.6, 0.5])
    assert np.isnan(scores.class_iou[2])
    assert scores.miou == 0.55
    assert scores.pixel_accuracy == 5 / 7


def test_accumulates_over_images():
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    cm.update(np.ones((2, 2), int), np.zeros((2, 2), int))
    assert cm.matrix.tolist() == [[4, 4], [0, 0]]
    assert cm.compute().miou == 0.25  # class 0 IoU 0.5, class 1 IoU 0
