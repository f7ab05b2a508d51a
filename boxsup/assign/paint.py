"""Painting the label map from the chosen candidate of each box."""

from __future__ import annotations

import numpy as np

from boxsup.assign.packed import PackedPool
from boxsup.data.annotations import BACKGROUND
from boxsup.proposals.pool import CandidatePool


def paint_labels(
    pool: CandidatePool | PackedPool, inside: np.ndarray, chosen: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """The label of every atom (A,) uint8: each box's chosen candidate, clipped to the box, gets the box label.

    ``pool`` is refined by the boxes and ``inside`` (A, B) tells which atoms lie in each box.
    Every other pixel is background. Where chosen segments overlap the smaller one stays on top
    (painted last), so a small object in front of a large one is not swallowed.
    """
    atom_labels = np.full(pool.n_atoms, BACKGROUND, dtype=np.uint8)
    segments = []
    for b, c in enumerate(chosen):
        atoms = pool.candidate_atoms(int(c))
        segments.append(atoms[inside[atoms, b]])
    areas = pool.atom_areas()
    sizes = [areas[s].sum() for s in segments]
    for b in np.argsort(sizes, kind="stable")[::-1]:  # largest first, smallest painted last
        atom_labels[segments[b]] = labels[b]
    return atom_labels
