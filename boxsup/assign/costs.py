"""Costs of giving a box's label to each candidate segment (Eq. 2-4 of the paper).

For a box B with class l_B and a candidate S:

    E_o(S, B) = 1 - IoU(B, box(S))                                  box(S): the tight box of S
    E_r(S, B) = 1/2 * [ mean_{p in S & B} e(p, l_B) + mean_{p in B - S} e(p, background) ]
    cost(S, B) = E_o(S, B) + lambda * E_r(S, B)

E_r is the network's disagreement with the label map that S induces inside B (l_B on S,
background on the rest of the box), averaged separately over the two regions. e(p, l) is the
per-pixel cost the label update receives: by default 1 - P(l | p) (``assign.pixel_cost: error``),
bounded like E_o, or the training loss -log P(l | p) (``xent``). Choices, each measured on the
demo data (docs/benchmarks.md):

- Eq. 3's sum over pixels (or a plain mean over B) rewards small segments whenever the network
  leans to background, which a young network does: the label maps collapsed to background within
  a few rounds. The two-region mean has no size bias.
- With -log P, a few confident mistakes of a young network outweigh the box fit at lambda = 3;
  with 1 - P both terms lie in [0, 1] and lambda is a true relative weight.
- Eq. 2's 1/N is constant within an image and dropped.
- A candidate with no pixel in B cannot be B's object (E_r = inf); when S covers all of B the
  background mean is 0.

With atoms split by the boxes (``CandidatePool.refined_by_boxes``), every sum over "p in S & B" is
a per-atom sum restricted to B's atoms followed by one sparse product over all (S, B) pairs.
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
    """E_r for every (candidate, box), shape (C, B); inf where the candidate misses the box.

    ``pool`` must be refined by the boxes; ``inside`` (A, B) says which atoms lie in which box;
    ``loss_sums`` (A, K) are per-atom loss sums; ``box_columns`` (B,) picks each box's class column
    in ``loss_sums``; ``box_areas`` (B,) are the box pixel counts.
    """
    inside = inside.astype(np.float64)
    bg = loss_sums[:, background_column]
    per_atom = np.concatenate(
        [loss_sums[:, box_columns] * inside, bg[:, None] * inside, pool.atom_areas()[:, None] * inside], axis=1
    )
    fg_in_s, bg_in_s, area_in_s = np.split(np.asarray(pool.sum_over_candidates(per_atom)), 3, axis=1)  # (C, B) each
    bg_rest = (inside.T @ bg)[None, :] - bg_in_s
    area_rest = box_areas[None, :] - area_in_s
    with np.errstate(divide="ignore", invalid="ignore"):
        fg_mean = np.where(area_in_s > 0, fg_in_s / area_in_s, np.inf)
        bg_mean = np.where(area_rest > 0, bg_rest / np.maximum(area_rest, 1), 0.0)
    return 0.5 * (fg_mean + bg_mean)
