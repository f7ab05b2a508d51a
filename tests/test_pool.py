"""CandidatePool: per-candidate areas, tight boxes, overlays and box refinement without per-candidate masks."""

import numpy as np
import scipy.sparse as sp

from boxsup.proposals.pool import CandidatePool


def test_areas_and_boxes_from_superpixels():
    atoms = np.array([[0, 0, 1], [2, 2, 1], [2, 2, 1]])
    pool = CandidatePool(atoms, sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)))
    np.testing.assert_array_equal(pool.areas(), [2, 5, 4, 9])
    np.testing.assert_array_equal(pool.boxes(), [[0, 0, 2, 1], [0, 0, 3, 3], [0, 1, 2, 3], [0, 0, 3, 3]])
    np.testing.assert_array_equal(pool.mask(1), atoms != 2)


def test_from_masks_overlay_reproduces_every_mask():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 9, 7)) > 0.5
    masks[2] = False  # an empty mask is dropped
    pool = CandidatePool.from_masks(masks)
    kept = [m for m in masks if m.any()]
    assert pool.n_candidates == len(kept)
    for i, m in enumerate(kept):
        np.testing.assert_array_equal(pool.mask(i), m)
    np.testing.assert_array_equal(pool.areas(), [m.sum() for m in kept])


def test_deduplicated_keeps_first_of_each_segment():
    pool = CandidatePool(np.array([[0, 1]]), sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 0], [1, 1]], np.float32)))
    dedup = pool.deduplicated()
    assert dedup.n_candidates == 3
    np.testing.assert_array_equal(dedup.membership.toarray(), [[1, 0], [0, 1], [1, 1]])


def test_refinement_splits_atoms_at_box_edges():
    # One L-shaped superpixel wraps a box without entering it: its parts must stay outside.
    atoms = np.zeros((6, 6), np.int32)
    atoms[2:4, 2:4] = 1
    pool = CandidatePool(atoms, sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], np.float32)))
    boxes = np.array([[2, 2, 4, 4], [0, 0, 3, 6]])
    refined, inside = pool.refined_by_boxes(boxes)
    for b, (x0, y0, x1, y1) in enumerate(boxes):
        box_mask = np.zeros((6, 6), bool)
        box_mask[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(inside[:, b][refined.atoms], box_mask)
    for i in range(pool.n_candidates):  # the candidates themselves are unchanged
        np.testing.assert_array_equal(refined.mask(i), pool.mask(i))


def test_mask_iou_and_best_candidate():
    from boxsup.proposals.quality import best_ious, mask_ious

    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2, :2] = True  # 4 px
    masks[1, :2, :] = True  # 8 px
    masks[2] = True  # 16 px
    pool = CandidatePool.from_masks(masks)
    target = np.zeros((4, 4), bool)
    target[:2, :3] = True  # 6 px
    np.testing.assert_allclose(mask_ious(pool, target), [4 / 6, 6 / 8, 6 / 16])
    np.testing.assert_allclose(best_ious(pool, [target, masks[2]]), [0.75, 1.0])
