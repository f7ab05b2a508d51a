"""Costs of giving a box's label to each candidate segment (Eq. 2-4 of the paper).

For a box B with class l_B and a candidate S:

    E_o(S, B) = 1 - IoU(B, box(S))                       box(S): the tight box of S
    E_r(S, B) = 1/|B| * sum_{p in B} e(p, l_S(p)),        l_S(p) = l_B if p in S, else background
    cost(S, B) = E_o(S, B) + lambda * E_r(S, B)

where e(p, l) = -log softmax(X_theta(p))_l is the network's per-pixel cross-entropy. Eq. 2 divides
E_o by the number of candidates N, a constant within an image; we drop it and take the mean of E_r
over the box's pixels instead of the paper's sum, so both terms lie in [0, ~1] and lambda keeps the
meaning of a relative weight whatever the image and box size. Only pixels inside B count: the
label map the assignment paints for B never reaches outside B (see ``paint``).

With atoms split by the boxes (``CandidatePool.refined_by_boxes``), the sum over p in B is exact
per atom:  |B| * E_r = sum_{a in B} L[a, bg] + sum_{a in B and S} (L[a, l_B] - L[a, bg]),
where L[a, l] is the sum of e(p, l) over the pixels of atom a: one sparse product for all (S, B).
"""

from __future__ import annotations

import numpy as np

from boxsup.proposals.pool import CandidatePool


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4); boxes are end-exclusive."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def overlap_cost(pool: CandidatePool, boxes: np.ndarray) -> np.ndarray:
    """E_o for every (candidate, box): 1 - IoU(box, tight box of the candidate); shape (C, B)."""
    return 1.0 - box_iou(pool.boxes(), boxes)


def atom_loss_sums(losses: np.ndarray, atoms: np.ndarray, n_atoms: int) -> np.ndarray:
    """Sum per-pixel losses over atoms: ``losses`` (K, H, W) -> (n_atoms, K).

    ``losses[j]`` is e(p, label_j) for the j-th label of interest (background and the image's box
    classes); the result is what crosses from the network to the label update.
    """
    flat = atoms.ravel()
    return np.stack(
        [np.bincount(flat, weights=layer.ravel(), minlength=n_atoms) for layer in losses], axis=1
    )


def region_cost(
    pool: CandidatePool,
    inside: np.ndarray,
    loss_sums: np.ndarray,
    box_columns: np.ndarray,
    box_areas: np.ndarray,
    background_column: int = 0,
) -> np.ndarray:
    """E_r for every (candidate, box), shape (C, B).

    ``pool`` must be refined by the boxes; ``inside`` (A, B) says which atoms lie in which box;
    ``loss_sums`` (A, K) are per-atom loss sums; ``box_columns`` (B,) picks each box's class column
    in ``loss_sums``; ``box_areas`` (B,) are the box pixel counts.
    """
    inside = inside.astype(np.float64)
    bg = loss_sums[:, background_column]
    all_background = inside.T @ bg  # (B,): every pixel of B labelled background
    gain = (loss_sums[:, box_columns] - bg[:, None]) * inside  # (A, B): relabel atom a as l_B
    return (all_background[None, :] + np.asarray(pool.sum_over_candidates(gain))) / box_areas[None, :]
