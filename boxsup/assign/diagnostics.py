"""How good a label update's choices are, on images whose masks are hidden from training (audit images).

For every box B of class l_B and candidate S, the GT IoU is the IoU of S's part inside B with the
GT pixels of class l_B inside B (void pixels left out). Per box it compares three choices:

- *chosen*: the candidate the label update picked;
- *E_o-best*: the candidate with the lowest E_o (what the box alone would pick);
- *oracle*: the candidate with the highest GT IoU (the best the pool offers).

And, in the rounds the network scores, the soft GT IoU of the network's own mask of B inside B
(P(l_B | p), per atom): how much its word can add.

With the atom-by-class GT histogram of the box-refined pool, all three are sparse products over
atoms: no per-candidate mask is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from boxsup.assign.assign import BoxedPool
from boxsup.assign.paint import paint_labels
from boxsup.data.annotations import IGNORE


@dataclass
class ChoiceDiagnostics:
    """Sums over the boxes of one image (or of a round, once added up)."""

    boxes: int = 0
    changed: int = 0  # painted region differs from the previous round's label map (boxes with one)
    compared: int = 0  # boxes that had a previous round to compare with
    not_eo_best: int = 0  # chosen candidate is not the E_o-best one
    gt_iou_chosen: float = 0.0
    gt_iou_eo_best: float = 0.0
    gt_iou_oracle: float = 0.0
    network_boxes: int = 0  # boxes the network scored (its mask exists)
    gt_iou_network: float = 0.0

    def __add__(self, other: "ChoiceDiagnostics") -> "ChoiceDiagnostics":
        return ChoiceDiagnostics(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple:
        return (self.boxes, self.changed, self.compared, self.not_eo_best,
                self.gt_iou_chosen, self.gt_iou_eo_best, self.gt_iou_oracle, self.network_boxes, self.gt_iou_network)

    @classmethod
    def from_tuple(cls, values) -> "ChoiceDiagnostics":
        """The inverse of ``as_tuple`` (e.g. after an all-reduce made every number a float)."""
        boxes, changed, compared, not_eo_best, chosen, eo_best, oracle, network_boxes, network = values
        return cls(int(round(boxes)), int(round(changed)), int(round(compared)), int(round(not_eo_best)),
                   float(chosen), float(eo_best), float(oracle), int(round(network_boxes)), float(network))

    def metrics(self) -> dict[str, float | None]:
        """Per-round MLflow metrics: shares and mean GT IoUs (None without audited boxes)."""
        if not self.boxes:
            return {}
        n = self.boxes
        return {
            "choice_changed": self.changed / self.compared if self.compared else None,
            "choice_not_eo_best": self.not_eo_best / n,
            "gt_iou_chosen": self.gt_iou_chosen / n,
            "gt_iou_eo_best": self.gt_iou_eo_best / n,
            "gt_iou_oracle": self.gt_iou_oracle / n,
            "gt_iou_network": self.gt_iou_network / self.network_boxes if self.network_boxes else None,
        }


def gt_atom_histogram(mask: np.ndarray, atoms: np.ndarray, num_classes: int) -> sp.csr_matrix:
    """A GT mask as a sparse (atoms, classes) histogram of pixel counts, void (IGNORE) left out."""
    valid = mask != IGNORE
    counts = sp.coo_matrix((np.ones(valid.sum()), (atoms[valid], mask[valid].astype(np.int64))),
                           shape=(int(atoms.max()) + 1, num_classes)).tocsr()
    counts.sum_duplicates()
    return counts


def box_gt_counts(boxed: BoxedPool, gt_histogram: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per atom, its GT pixels of each box's class (A, B) and its non-void pixels (A,), float64."""
    counts = np.asarray(gt_histogram[:, boxed.labels].todense(), dtype=np.float64)
    return counts, np.asarray(gt_histogram.sum(axis=1), dtype=np.float64).ravel()


def candidate_gt_iou(boxed: BoxedPool, gt_histogram: sp.csr_matrix) -> np.ndarray:
    """GT IoU of every (candidate, box) inside the box, (C, B); ``gt_histogram`` is (A, classes) pixel counts."""
    counts, valid = box_gt_counts(boxed, gt_histogram)  # (A, B): class l_B per atom; (A,): non-void pixels
    inside = boxed.inside.astype(np.float64)
    per_atom = np.concatenate([counts * inside, valid[:, None] * inside], axis=1)
    inter, area = np.split(np.asarray(boxed.pool.sum_over_candidates(per_atom)), 2, axis=1)
    gt_in_box = (counts * inside).sum(axis=0)[None, :]
    union = area + gt_in_box - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class ReferenceChoices:
    """What an image's diagnostics compare with, fixed for a run (the pool and the GT do not change):
    the E_o-best and oracle candidates per box and their summed GT IoUs (a few numbers to keep)."""

    eo_best: np.ndarray  # (B,)
    oracle: np.ndarray  # (B,)
    gt_iou_eo_best: float
    gt_iou_oracle: float

    @classmethod
    def build(cls, boxed: BoxedPool, gt_histogram: sp.csr_matrix) -> "ReferenceChoices":
        iou = candidate_gt_iou(boxed, gt_histogram)
        columns = np.arange(len(boxed.labels))
        eo_best, oracle = np.argmin(boxed.overlap, axis=0), np.argmax(iou, axis=0)
        return cls(eo_best, oracle, float(iou[eo_best, columns].sum()), float(iou[oracle, columns].sum()))


def network_gt_iou(boxed: BoxedPool, box_class_loss: np.ndarray, gt_histogram: sp.csr_matrix) -> np.ndarray:
    """Soft GT IoU inside its box of the network's mask of each box, (B,).

    ``box_class_loss`` (A, B) is sum_{p in atom} (1 - P(l_B | p)), 0 off B; an atom's mass
    m_a = sum P(l_B | p) meets its GT pixels of l_B in proportion to their share of its non-void pixels:
    I = sum_a m_a g_a / v_a, IoU = I / (sum_a m_a v_a / |a| + sum_a g_a - I) over the atoms of B.
    """
    counts, valid = box_gt_counts(boxed, gt_histogram)
    counts, valid = counts * boxed.inside, valid[:, None]  # g (A, B), v (A, 1)
    areas = boxed.pool.atom_areas().astype(np.float64)[:, None]
    mass = (areas - box_class_loss) * boxed.inside * (valid / np.maximum(areas, 1))  # P(l_B) mass on non-void pixels
    inter = (mass * np.divide(counts, valid, out=np.zeros_like(counts), where=valid > 0)).sum(axis=0)
    union = mass.sum(axis=0) + counts.sum(axis=0) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def chosen_gt_iou(boxed: BoxedPool, chosen: np.ndarray, gt_histogram: sp.csr_matrix) -> np.ndarray:
    """GT IoU inside its box of each box's chosen candidate, (B,): ``candidate_gt_iou`` for B rows only."""
    valid = np.asarray(gt_histogram.sum(axis=1), dtype=np.float64).ravel()
    out = np.zeros(len(chosen))
    for b, (c, label) in enumerate(zip(chosen, boxed.labels)):
        in_box = boxed.inside[:, b]
        counts = np.asarray(gt_histogram[:, int(label)].todense(), dtype=np.float64).ravel() * in_box
        atoms = boxed.pool.candidate_atoms(int(c))
        atoms = atoms[in_box[atoms]]
        inter, area = counts[atoms].sum(), valid[atoms].sum()
        union = area + counts.sum() - inter
        out[b] = inter / union if union > 0 else 0.0
    return out


def diagnose(
    boxed: BoxedPool, chosen: np.ndarray, gt_histogram: sp.csr_matrix,
    label_map: np.ndarray, previous_map: np.ndarray | None, reference: ReferenceChoices | None = None,
    box_class_loss: np.ndarray | None = None,
) -> tuple[ChoiceDiagnostics, np.ndarray, np.ndarray]:
    """One image's diagnostics, and the atom labels the E_o-best and the oracle choices would paint.

    ``reference``: the image's ``ReferenceChoices`` kept from an earlier round (built when None);
    ``box_class_loss``: the network's per-atom (A, B) sums of 1 - P(l_B | p) when it scored this round.
    """
    reference = reference if reference is not None else ReferenceChoices.build(boxed, gt_histogram)
    out = ChoiceDiagnostics(
        boxes=len(chosen),
        not_eo_best=int((chosen != reference.eo_best).sum()),
        gt_iou_chosen=float(chosen_gt_iou(boxed, chosen, gt_histogram).sum()),
        gt_iou_eo_best=reference.gt_iou_eo_best,
        gt_iou_oracle=reference.gt_iou_oracle,
    )
    if box_class_loss is not None:
        out.network_boxes = len(chosen)
        out.gt_iou_network = float(network_gt_iou(boxed, box_class_loss, gt_histogram).sum())
    if previous_map is not None and previous_map.shape == label_map.shape:
        out.compared = len(chosen)
        for (x0, y0, x1, y1), label in zip(boxed.boxes.astype(int), boxed.labels):
            now, before = label_map[y0:y1, x0:x1] == label, previous_map[y0:y1, x0:x1] == label
            out.changed += int((now != before).any())
    paint = lambda choice: paint_labels(boxed.pool, boxed.inside, choice, boxed.labels)  # noqa: E731
    return out, paint(reference.eo_best), paint(reference.oracle)
