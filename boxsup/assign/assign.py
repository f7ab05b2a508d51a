"""The label update of one image (the E-step of Sec. 4.3): costs, sampling, painting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boxsup.assign.costs import atom_loss_sums, consensus_cost, overlap_cost, region_cost, soft_iou_cost
from boxsup.assign.packed import ARRAY_OVERHEAD, PackedPool
from boxsup.assign.paint import paint_labels
from boxsup.assign.rule import LabelUpdateRule
from boxsup.assign.sampling import sample_lowest_k
from boxsup.data.annotations import BACKGROUND, IGNORE
from boxsup.proposals.pool import CandidatePool


class EmptyPoolError(ValueError):
    """The image has no candidate segment to assign."""


@dataclass
class BoxedPool:
    """A candidate pool whose atoms are split by the image's GT boxes, packed for caching (``PackedPool``).

    ``loss_labels`` lists the labels whose per-pixel losses the network must supply, background
    first: ``loss_sums[:, j]`` sums e(p, loss_labels[j]) over each atom.
    """

    pool: PackedPool
    inside: np.ndarray  # (A, B) bool
    boxes: np.ndarray  # (B, 4)
    labels: np.ndarray  # (B,)
    loss_labels: np.ndarray  # (K,), loss_labels[0] == BACKGROUND
    overlap: np.ndarray  # (C, B) E_o, fixed for the whole run
    consensus_margin: float | None = None  # the margin ``consensus`` was computed for (None: not kept)
    consensus: np.ndarray | None = None  # (C, B) float32 E_c at that margin, fixed for the whole run

    @classmethod
    def build(cls, pool: CandidatePool, boxes: np.ndarray, labels: np.ndarray,
              consensus_margin: float | None = None) -> "BoxedPool":
        """Refine ``pool`` by the boxes; with ``consensus_margin``, keep E_c at that margin too."""
        if pool.n_candidates == 0:
            raise EmptyPoolError("empty candidate pool")
        refined, inside = pool.refined_by_boxes(boxes)
        boxes = np.asarray(boxes).reshape(-1, 4)
        boxed = cls(PackedPool.from_pool(refined), inside, boxes, np.asarray(labels), loss_labels_for(labels),
                    overlap_cost(pool, boxes))
        if consensus_margin is not None:
            boxed.consensus_margin, boxed.consensus = consensus_margin, boxed.consensus_cost(consensus_margin)
        return boxed

    def consensus_cost(self, margin: float) -> np.ndarray:
        """E_c (C, B) float32 at ``margin`` (``costs.consensus_cost``): the one kept when it is that margin's."""
        if self.consensus is not None and margin == self.consensus_margin:
            return self.consensus
        return consensus_cost(self.pool, self.inside, self.overlap, margin).astype(np.float32)

    @property
    def box_columns(self) -> np.ndarray:
        """Each box's column in ``loss_sums`` (its class's place in ``loss_labels``), (B,)."""
        return np.searchsorted(self.loss_labels, self.labels)

    @property
    def nbytes(self) -> int:
        """Memory this pool holds (what ``BoxedPoolCache`` counts against its budget)."""
        arrays = (self.inside, self.boxes, self.labels, self.loss_labels, self.overlap,
                  *(() if self.consensus is None else (self.consensus,)))
        return self.pool.nbytes + sum(a.nbytes + ARRAY_OVERHEAD for a in arrays)

    def sums_from_means(self, atom_means: np.ndarray) -> np.ndarray:
        """Undo ``atom_mean_costs``: per-atom sums (A, K) from the means a worker sent."""
        if atom_means.shape != (self.pool.n_atoms, len(self.loss_labels)):
            raise ValueError(f"per-atom costs of shape {atom_means.shape} do not fit this pool "
                             f"({self.pool.n_atoms} atoms, {len(self.loss_labels)} labels)")
        return atom_means.astype(np.float64) * self.pool.atom_areas()[:, None]

    def loss_sums(self, pixel_losses: np.ndarray) -> np.ndarray:
        """Reduce per-pixel losses (num_classes, H, W) to per-atom sums (A, K) for ``loss_labels``."""
        return reduce_losses(pixel_losses, self.pool.atoms, self.labels)


def loss_labels_for(labels: np.ndarray) -> np.ndarray:
    """The labels whose losses a label update needs: background, then the image's box classes."""
    return np.concatenate([[BACKGROUND], np.unique(labels)]).astype(np.int64)


def atom_mean_costs(pixel_losses: np.ndarray, refined_atoms: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What a worker sends to the label update: per-atom means of e(p, l), (A, K) float16.

    Means lie in [0, 1] for e = 1 - P, so float16 keeps three significant digits at half the bytes
    of float32 sums; the receiver multiplies by the atom areas it already holds
    (``BoxedPool.sums_from_means``).
    """
    sums = reduce_losses(pixel_losses, refined_atoms, labels)
    areas = np.bincount(refined_atoms.ravel(), minlength=len(sums))
    return (sums / np.maximum(areas, 1)[:, None]).astype(np.float16)


def reduce_losses(pixel_losses: np.ndarray, refined_atoms: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-atom sums (A, K) of per-pixel losses (num_classes, H, W) over box-refined atoms.

    This is all that crosses from the network to the label update: A x K numbers per image.
    """
    n_atoms = int(refined_atoms.max()) + 1
    return atom_loss_sums(pixel_losses[loss_labels_for(labels)], refined_atoms, n_atoms)


@dataclass
class Assignment:
    """Result of one image's label update."""

    label_map: np.ndarray  # (H, W) uint8: the painted labels, IGNORE on the void atoms
    atom_labels: np.ndarray  # (A,) uint8, the painted labels before voiding
    chosen: np.ndarray  # (B,) candidate index per box
    chosen_cost: np.ndarray  # (B,) cost of the chosen candidate
    void: np.ndarray | None = None  # (A,) bool: atoms left out of training (IGNORE), None when none are


def assignment_costs(
    boxed: BoxedPool, loss_sums: np.ndarray | None, rule: LabelUpdateRule, round_index: int,
) -> np.ndarray:
    """cost(S, B) = E_o + mu * E_c + lambda_r * E_r for all candidates and boxes, (C, B); no E_r without losses.

    lambda_r is ``rule.lam_at(round_index)``. ``rule.consensus`` mu weighs E_c, the disagreement with the
    candidates whose E_o is within ``rule.consensus_margin`` of the box's best (``costs.consensus_cost``;
    0: none, as in the paper).

    ``rule.region_cost``: E_r as the two-region mean (``costs.region_cost``) or 1 - soft IoU with the
    network's mask (``costs.soft_iou_cost``, for e = 1 - P).

    ``rule.trust_margin`` δ < 1 keeps only the candidates that fit the box almost as well as the best one,
    E_o(S, B) <= min_S' E_o(S', B) + δ; the others cost inf (never drawn). 1 keeps every candidate.
    """
    lam = rule.lam_at(round_index)
    costs = boxed.overlap
    if rule.consensus:
        costs = costs + rule.consensus * boxed.consensus_cost(rule.consensus_margin).astype(np.float64)
    if loss_sums is not None and lam != 0:
        columns = boxed.box_columns
        areas = np.prod(boxed.boxes[:, 2:] - boxed.boxes[:, :2], axis=1).astype(np.float64)
        term = soft_iou_cost if rule.region_cost == "iou" else region_cost
        costs = costs + lam * term(boxed.pool, boxed.inside, loss_sums, columns, areas)
    if rule.trust_margin < 1:
        trusted = boxed.overlap <= boxed.overlap.min(axis=0, keepdims=True) + rule.trust_margin
        costs = np.where(trusted, costs, np.inf)
    return costs


def assign_labels(
    boxed: BoxedPool, loss_sums: np.ndarray | None, rule: LabelUpdateRule, round_index: int, rng: np.random.Generator,
) -> Assignment:
    """Label one image for round ``round_index`` by ``rule``: pick one candidate per box uniformly among
    its k lowest costs (``rule.k_at``: 1 in its greedy rounds) and paint the label map.

    ``rule.void_k`` > 1 paints void the atoms on which a box's ``void_k`` near-best candidates disagree
    (``disputed_atoms``); 0 or 1 voids nothing, as in the paper.

    ``loss_sums`` is None in round 0 (no trained network yet): E_o alone decides. ``rule.sample_margin``
    ε keeps out of the draw every candidate costing more than the box's lowest cost + ε, so the k
    drawn from are near-equivalent ones, not clearly worse ones (inf: the plain k lowest).
    """
    costs = assignment_costs(boxed, loss_sums, rule, round_index)
    if np.isfinite(rule.sample_margin):
        costs = np.where(costs <= costs.min(axis=0, keepdims=True) + rule.sample_margin, costs, np.inf)
    chosen = sample_lowest_k(costs, rule.k_at(round_index, scored=loss_sums is not None), rng)
    atom_labels = paint_labels(boxed.pool, boxed.inside, chosen, boxed.labels)
    void = disputed_atoms(boxed, costs, rule.void_k) if rule.void_k > 1 else None
    painted = atom_labels if void is None else np.where(void, IGNORE, atom_labels).astype(np.uint8)
    return Assignment(boxed.pool.expand(painted), atom_labels, chosen, costs[chosen, np.arange(len(chosen))], void)


def disputed_atoms(boxed: BoxedPool, costs: np.ndarray, void_k: int) -> np.ndarray:
    """The atoms (A,) bool inside a box on which its near-best candidates disagree.

    N_B: the ``void_k`` lowest finite costs of box B (after the sample margin: within it of the
    lowest). An atom of B covered by some but not all of N_B is disputed; the label update
    paints it void (IGNORE), so the network neither learns it as B's class nor as background.
    Where N_B agree the painted label stands. The union over the boxes is returned.
    """
    void = np.zeros(boxed.pool.n_atoms, dtype=bool)
    order = np.argsort(costs, axis=0, kind="stable")[:void_k]  # (<= void_k, B)
    for b in range(costs.shape[1]):
        near = order[:, b][np.isfinite(costs[order[:, b], b])]
        if len(near) < 2:
            continue
        atoms = np.concatenate([boxed.pool.candidate_atoms(int(c)) for c in near])
        cover = np.bincount(atoms, minlength=boxed.pool.n_atoms)
        void |= boxed.inside[:, b] & (cover > 0) & (cover < len(near))
    return void
