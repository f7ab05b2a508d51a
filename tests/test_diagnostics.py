"""The label-update diagnostics on a hand-made 4x4 pool: GT IoU of the chosen, E_o-best and oracle candidates."""

import numpy as np
import scipy.sparse as sp

from boxsup.assign import BoxedPool
from boxsup.assign.diagnostics import ChoiceDiagnostics, candidate_gt_iou, diagnose
from boxsup.proposals.pool import CandidatePool

# 4x4 image, four 2x2 atoms:  0 0 1 1 / 0 0 1 1 / 2 2 3 3 / 2 2 3 3; candidates {0}, {0,1}, {0,1,2,3}, {1}
ATOMS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
MEMBERS = [[0], [0, 1], [0, 1, 2, 3], [1]]


def boxed_pool() -> BoxedPool:
    m = np.zeros((len(MEMBERS), 4), np.float32)
    for i, atoms in enumerate(MEMBERS):
        m[i, atoms] = 1
    return BoxedPool.build(CandidatePool(ATOMS, sp.csr_matrix(m)), np.array([[0, 0, 4, 4]]), np.array([1]))


def gt_histogram(boxed: BoxedPool, mask: np.ndarray) -> sp.csr_matrix:
    atoms = boxed.pool.atoms
    valid = mask != 255
    return sp.csr_matrix(sp.coo_matrix((np.ones(valid.sum()), (atoms[valid], mask[valid])), shape=(boxed.pool.n_atoms, 2)))


def test_gt_iou_of_every_candidate_and_the_three_choices():
    boxed = boxed_pool()
    mask = np.zeros((4, 4), np.int64)
    mask[:2, 2:] = 1  # the object is atom 1
    mask[0, 0] = 255  # a void pixel counts nowhere
    iou = candidate_gt_iou(boxed, gt_histogram(boxed, mask))[:, 0]
    # {0}: 0/(3+4); {0,1}: 4/(7+4-4); everything: 4/(15+4-4); {1}: 4/4
    np.testing.assert_allclose(iou, [0.0, 4 / 7, 4 / 15, 1.0])

    label_map = np.zeros((4, 4), np.uint8)
    label_map[:2, :] = 1  # the chosen {0,1} painted
    previous = np.zeros((4, 4), np.uint8)
    previous[:, :] = 1  # the whole box painted in the previous round
    stats, eo_best, oracle = diagnose(boxed, np.array([1]), gt_histogram(boxed, mask), label_map, previous)
    # E_o-best: the tight box of {0,1,2,3} is the box itself
    assert stats == ChoiceDiagnostics(boxes=1, changed=1, compared=1, not_eo_best=1,
                                      gt_iou_chosen=4 / 7, gt_iou_eo_best=4 / 15, gt_iou_oracle=1.0)
    np.testing.assert_array_equal(oracle[boxed.pool.atoms] == 1, mask == 1)
    assert (eo_best == 1).all()
    metrics = (stats + stats).metrics()
    assert metrics["choice_changed"] == 1.0 and metrics["gt_iou_oracle"] == 1.0


def test_an_unchanged_choice_and_no_previous_round():
    boxed = boxed_pool()
    mask = np.ones((4, 4), np.int64)
    label_map = np.ones((4, 4), np.uint8)
    stats, _, _ = diagnose(boxed, np.array([2]), gt_histogram(boxed, mask), label_map, label_map.copy())
    assert (stats.changed, stats.compared, stats.not_eo_best, stats.gt_iou_chosen) == (0, 1, 0, 1.0)
    stats, _, _ = diagnose(boxed, np.array([2]), gt_histogram(boxed, mask), label_map, None)
    assert stats.compared == 0 and stats.metrics()["choice_changed"] is None


def test_void_share_and_kept_labels_score_only_the_pixels_that_train():
    from collections import Counter

    from boxsup.trainers.label_round import RoundSummary

    chosen = np.array([[10, 2], [4, 4]])  # 20 pixels painted, 14 right
    kept = np.array([[9, 0], [1, 4]])  # 14 of them not void, 13 right
    summary = RoundSummary([], Counter(), 1, 0.0, {"chosen": chosen, "eo_best": chosen, "oracle": chosen,
                                                    "kept": kept}, ChoiceDiagnostics(), 0.0)
    metrics = summary.metrics()
    assert metrics["void_share"] == 1 - 14 / 20
    np.testing.assert_allclose(metrics["pseudo_miou_kept"], (9 / 10 + 4 / 5) / 2)
    np.testing.assert_allclose(metrics["pseudo_miou"], (10 / 16 + 4 / 10) / 2)
    no_void = RoundSummary([], Counter(), 1, 0.0, {"chosen": chosen, "eo_best": chosen, "oracle": chosen,
                                                   "kept": np.zeros((2, 2))}, ChoiceDiagnostics(), 0.0).metrics()
    assert no_void["void_share"] is None and no_void["pseudo_miou_kept"] is None


def test_gt_iou_of_the_networks_own_mask():
    """gt_iou_network: the soft IoU of the network's mask of the box with the GT, per atom."""
    boxed = boxed_pool()
    mask = np.zeros((4, 4), np.int64)
    mask[:2, 2:] = 1  # the object is atom 1
    mask[0, 0] = 255  # one void pixel in atom 0
    # P_B per atom: 0.5 on atom 0, 1.0 on atom 1, 0 elsewhere; loss sums are 4 x (1 - P_B)
    box_class_loss = np.array([[2.0], [0.0], [4.0], [4.0]])
    hist = gt_histogram(boxed, mask)
    stats, _, _ = diagnose(boxed, np.array([1]), hist, np.zeros((4, 4), np.uint8), None, box_class_loss=box_class_loss)
    # mass on non-void pixels: atom 0: 0.5 x 3 = 1.5, atom 1: 4; I = 4; union = 5.5 + 4 - 4
    assert stats.network_boxes == 1
    np.testing.assert_allclose(stats.gt_iou_network, 4 / 5.5)
    assert stats.metrics()["gt_iou_network"] == stats.gt_iou_network
    # the all-reduce round trip keeps it, and a round without the network reports none
    assert ChoiceDiagnostics.from_tuple(np.array(stats.as_tuple(), dtype=np.float64)) == stats
    none, _, _ = diagnose(boxed, np.array([1]), hist, np.zeros((4, 4), np.uint8), None)
    assert none.metrics()["gt_iou_network"] is None
