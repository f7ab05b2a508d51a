"""Costs of giving a box's label to each candidate segment (Eq. 2-4 of the paper).

For a box B with class l_B and a candidate S, round r of the label update scores

    cost_r(S, B) = E_o(S, B) + mu * E_c(S, B) + lambda_r * E_r(S, B)     over the trusted candidates of B
    E_o(S, B)    = 1 - IoU(B, box(S))                                    box(S): the tight box of S
    E_c(S, B)    = 1 - soft IoU of S with c_B, the share of B's near-best candidates (E_o within
                   ``assign.consensus_margin`` of the best) covering each atom (``consensus_cost``)

and draws S uniformly among the k lowest costs (the robust form: among those of them within
``assign.sample_margin`` ε of the lowest, so the draw varies between near-equivalent candidates,
not towards clearly worse ones; from epoch ``train.lr_step`` on, ``assign.greedy_after_lr_step``,
the lowest). Round 0, before any network, is E_o + mu E_c alone, drawn among the k lowest like
every round (``assign.greedy_round0: true`` takes the lowest instead; off by default, docs/results.md
compares the two).
E_r is the network's disagreement with the label map that S induces inside B (l_B on S,
background on the rest of B), from per-pixel costs e(p, l) = 1 - P(l | p)
(``assign.pixel_cost: error``; ``xent``: -log P(l | p)). E_c (``assign.consensus`` mu = 1 in the
robust form, 0 in the paper form) needs no network: of the candidates that fit the box about
equally well it prefers the one they agree on most, their medoid. Two forms:

``assign.form: robust`` (the default; measured in docs/results.md)

    E_r(S, B) = 1 - I / (|S & B| + T - I),   I = sum_{p in S & B} P(l_B | p),  T = sum_{p in B} P(l_B | p)

i.e. one minus the soft IoU of S with the network's mask of l_B inside B (``soft_iou_cost``,
``assign.region_cost: iou``). Like E_o it is one minus an IoU in [0, 1], so lambda is a true
relative weight. A pixel raises the soft IoU when included if P(l_B | p) > IoU / (1 + IoU): neither
the network's confident core (smaller than the object while the network is young) nor the whole
box is favoured. The robust form also has three optional safeguards, off by default because the
measurements did not support them (docs/results.md): ``assign.trust_margin`` delta keeps only
candidates with E_o(S, B) <= min_S' E_o(S', B) + delta; ``assign.lam_ramp`` R makes lambda_r =
lambda min(1, (r - r_0 + 1) / R) from the first network round r_0; ``assign.ema`` scores with an
average of the weights over epochs.

Which P the network gives E_r (robust form): with ``assign.score_flip`` (the default)

    P(l | p) = 1/2 [ P_net(l | p; image) + P_net(l | m(p); mirror image) ]      m: the horizontal mirror

the training augmentation's two views averaged, which steadies a young network's masks (without it,
and in the paper form, the image alone).

Void (``assign.void_k`` = m > 1, robust form only; ``boxsup.assign.assign.disputed_atoms``): let N_B
be the m lowest-cost candidates of B (within ε of the lowest). A pixel p of B is painted void
(255, left out of the training loss) when

    0 < #{S in N_B : p in S} < |N_B|

i.e. where near-equivalent choices disagree and the label is likely wrong; elsewhere the drawn
candidate's label stands. It does not need the network (lambda = 0 uses it too, from E_o alone).

``assign.form: paper`` (Sec. 4.3 with this project's normalisation of Eq. 3)

    E_r(S, B) = 1/2 * [ mean_{p in S & B} e(p, l_B) + mean_{p in B - S} e(p, background) ]

every candidate, lambda_r = lambda from the first round the network scores, the plain k lowest,
the last weights (``region_cost``; ``assign.region_cost: mean`` in the robust form). Measured choices:

- Eq. 3's sum over pixels (or a plain mean over B) rewards small segments whenever the network
  leans to background, which a young network does: the label maps collapsed to background within
  a few rounds. The two-region mean has no such size bias, but it still rewards the network's
  confident core: on photo-like data the labels shrank round after round (docs/results.md).
- With -log P, a few confident mistakes of a young network outweigh the box fit at lambda = 3;
  with 1 - P both terms lie in [0, 1].
- Eq. 2's 1/N is constant within an image and dropped.
- A candidate with no pixel in B cannot be B's object (E_r = inf); when S covers all of B the
  background mean is 0.

With atoms split by the boxes (``CandidatePool.refined_by_boxes``), every sum over "p in S & B" is
a per-atom sum restricted to B's atoms followed by one sparse product over all (S, B) pairs.
"""

from __future__ import annotations

import numpy as np

from boxsup.assign.packed import PackedPool
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


def consensus_cost(
    pool: CandidatePool | PackedPool, inside: np.ndarray, overlap: np.ndarray, margin: float,
) -> np.ndarray:
    """E_c for every (candidate, box), (C, B): 1 - soft IoU of S with the agreement of B's near-best candidates.

    N_B = {S' : E_o(S', B) <= min E_o(., B) + margin}, the candidates that fit the box about as well
    as the best; c_B(a) = |{S' in N_B : a in S'}| / |N_B| is the share of them covering atom a. Then
    E_c = 1 - I / (|S & B| + T - I), with I = sum_{a in S & B} |a| c_B(a) and T = sum_{a in B} |a| c_B(a):
    of the candidates that fit the box equally well, the one most of them agree with (their medoid)
    costs least. It needs neither the network nor masks, and is fixed for the run like E_o.
    """
    inside = inside.astype(np.float64)
    areas = pool.atom_areas()[:, None]
    near = overlap <= overlap.min(axis=0, keepdims=True) + margin  # (C, B)
    coverage = np.zeros(inside.shape)
    for b in range(overlap.shape[1]):
        members = np.flatnonzero(near[:, b])
        for c in members:
            coverage[pool.candidate_atoms(int(c)), b] += 1.0 / len(members)
    agreed = coverage * inside * areas  # (A, B)
    inter, area_in_s = np.split(np.asarray(pool.sum_over_candidates(np.concatenate([agreed, areas * inside], axis=1))),
                                2, axis=1)
    union = area_in_s + agreed.sum(axis=0)[None, :] - inter
    return np.where(area_in_s > 0, 1.0 - np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), 1.0)


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
    pool: CandidatePool | PackedPool,
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


def soft_iou_cost(
    pool: CandidatePool | PackedPool,
    inside: np.ndarray,
    loss_sums: np.ndarray,
    box_columns: np.ndarray,
    box_areas: np.ndarray,
) -> np.ndarray:
    """E_r = 1 - soft IoU of S with the network's mask of l_B inside B, for every (candidate, box), (C, B).

    With e(p, l) = 1 - P(l | p): I = sum_{p in S & B} P(l_B | p), T = sum_{p in B} P(l_B | p),
    soft IoU = I / (|S & B| + T - I). Like E_o = 1 - IoU(B, box(S)) it lies in [0, 1]; a pixel
    raises it when included if P(l_B | p) > IoU / (1 + IoU), so neither the network's confident
    core (smaller) nor the whole box (larger) is favoured. inf where S misses the box.
    """
    inside = inside.astype(np.float64)
    fg = loss_sums[:, box_columns] * inside  # (A, B): sum of 1 - P(l_B) per atom inside each box
    areas = pool.atom_areas()[:, None] * inside
    fg_in_s, area_in_s = np.split(np.asarray(pool.sum_over_candidates(np.concatenate([fg, areas], axis=1))), 2, axis=1)
    inter = area_in_s - fg_in_s  # sum of P(l_B) over S & B
    total = (box_areas - fg.sum(axis=0))[None, :]  # sum of P(l_B) over B
    union = area_in_s + total - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(area_in_s > 0, inter / np.maximum(union, 1e-9), np.nan)
    return np.where(area_in_s > 0, 1.0 - np.clip(iou, 0.0, 1.0), np.inf)
