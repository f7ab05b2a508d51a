"""CandidatePool: an image's fixed candidate segments, stored as unions of superpixels.

A pool is a superpixel map (H x W ints, ids 0..A-1, called *atoms*) plus a sparse
candidate-by-atom membership matrix (C x A, CSR, 0/1). Any per-candidate sum of a per-pixel
quantity is one ``np.bincount`` over the atom map followed by one sparse matrix product, so no
full-resolution mask per candidate is ever built. Arbitrary masks (GrabCut, rectangles) are put in
this form by :meth:`CandidatePool.from_masks`: the atoms are the cells of the masks' overlay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def atom_boxes(atoms: np.ndarray, n_atoms: int) -> np.ndarray:
    """Tight box of every atom as (x0, y0, x1, y1), end-exclusive; empty atoms get (W, H, 0, 0)."""
    h, w = atoms.shape
    flat = atoms.ravel()
    order = np.argsort(flat, kind="stable")  # pixels grouped by atom, in raster order within each
    counts = np.bincount(flat, minlength=n_atoms)
    present = counts > 0
    starts = (np.cumsum(counts) - counts)[present]
    xs, ys = order % w, order // w
    boxes = np.empty((n_atoms, 4), dtype=np.int32)
    boxes[:] = (w, h, 0, 0)
    boxes[present, 0] = np.minimum.reduceat(xs, starts)
    boxes[present, 1] = ys[starts]  # raster order: the first pixel has the smallest row
    boxes[present, 2] = np.maximum.reduceat(xs, starts) + 1
    boxes[present, 3] = np.maximum.reduceat(ys, starts) + 1
    return boxes


@dataclass
class CandidatePool:
    """Candidate segments of one image as unions of atoms (superpixels or overlay cells)."""

    atoms: np.ndarray  # (H, W) int32, values 0..n_atoms-1
    membership: sp.csr_matrix  # (n_candidates, n_atoms), entries 1 where the atom is in the candidate

    def __post_init__(self) -> None:
        self.atoms = np.ascontiguousarray(self.atoms, dtype=np.int32)
        self._n_atoms = int(self.atoms.max()) + 1 if self.atoms.size else 0
        self._atom_areas: np.ndarray | None = None  # counted on first use: a pass over the pixels
        self.membership = sp.csr_matrix(self.membership, dtype=np.float32, copy=True)
        self.membership.sum_duplicates()
        self.membership.eliminate_zeros()
        self.membership.data[:] = 1.0
        if self.membership.shape[1] != self.n_atoms:
            raise ValueError(
                f"membership has {self.membership.shape[1]} atom columns, atom map has {self.n_atoms} ids"
            )

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.atoms.shape  # type: ignore[return-value]

    @property
    def n_atoms(self) -> int:
        return self._n_atoms

    @property
    def n_candidates(self) -> int:
        return self.membership.shape[0]

    # ---- per-candidate quantities ------------------------------------------------------------
    def atom_areas(self) -> np.ndarray:
        """Pixel count of every atom, (A,) float64; counted once per pool (kept as int32, 4 bytes an atom)."""
        if self._atom_areas is None:
            self._atom_areas = np.bincount(self.atoms.ravel(), minlength=self.n_atoms).astype(np.int32)
        return self._atom_areas.astype(np.float64)

    def sum_over_candidates(self, atom_values: np.ndarray) -> np.ndarray:
        """Per-candidate sums of per-atom values; ``atom_values`` is (A,) or (A, K)."""
        return self.membership @ atom_values

    def areas(self) -> np.ndarray:
        """Pixel count of every candidate, shape (C,)."""
        return self.sum_over_candidates(self.atom_areas())

    def boxes(self) -> np.ndarray:
        """Tight box (x0, y0, x1, y1), end-exclusive, of every candidate, shape (C, 4)."""
        per_atom = atom_boxes(self.atoms, self.n_atoms)
        m = self.membership
        out = np.zeros((self.n_candidates, 4), dtype=np.int32)
        nonempty = np.diff(m.indptr) > 0
        if not nonempty.any():
            return out
        starts = m.indptr[:-1][nonempty]
        member_boxes = per_atom[m.indices]
        out[nonempty, 0] = np.minimum.reduceat(member_boxes[:, 0], starts)
        out[nonempty, 1] = np.minimum.reduceat(member_boxes[:, 1], starts)
        out[nonempty, 2] = np.maximum.reduceat(member_boxes[:, 2], starts)
        out[nonempty, 3] = np.maximum.reduceat(member_boxes[:, 3], starts)
        return out

    def candidate_atoms(self, index: int) -> np.ndarray:
        """The atom ids of one candidate."""
        return self.membership.indices[self.membership.indptr[index] : self.membership.indptr[index + 1]]

    def expand(self, atom_values: np.ndarray) -> np.ndarray:
        """A full map (H, W) from one value per atom."""
        return atom_values[self.atoms]

    def mask(self, index: int) -> np.ndarray:
        """Full-resolution boolean mask of one candidate (for pictures and tests, not hot paths)."""
        member = np.zeros(self.n_atoms, dtype=bool)
        member[self.membership.indices[self.membership.indptr[index] : self.membership.indptr[index + 1]]] = True
        return member[self.atoms]

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_masks(cls, masks: np.ndarray) -> "CandidatePool":
        """Pool from a stack of boolean masks (C, H, W); the atoms are the cells of their overlay.

        Empty masks are dropped; pixels covered by no mask form atoms of their own.
        """
        masks = np.asarray(masks, dtype=bool)
        masks = masks[masks.reshape(len(masks), -1).any(axis=1)] if len(masks) else masks
        n, h, w = masks.shape if masks.ndim == 3 else (0, *masks.shape[-2:])
        if n == 0:
            return cls(np.zeros((h, w), np.int32), sp.csr_matrix((0, 1), dtype=np.float32))
        # Each pixel's membership signature is a row of bits; equal signatures form one atom.
        packed = np.packbits(masks.reshape(n, -1), axis=0).T  # (H*W, ceil(n/8))
        _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
        atoms = inverse.reshape(h, w).astype(np.int32)
        atom_member = masks.reshape(n, -1)[:, first]  # (n, A): the signature of each atom
        return cls(atoms, sp.csr_matrix(atom_member.astype(np.float32)))

    def deduplicated(self) -> "CandidatePool":
        """The same pool with repeated candidates (identical atom sets) removed, first kept."""
        m = self.membership.tocsr()
        m.sort_indices()
        seen: set[bytes] = set()
        keep = []
        for i in range(m.shape[0]):
            key = m.indices[m.indptr[i] : m.indptr[i + 1]].tobytes()
            if key not in seen:
                seen.add(key)
                keep.append(i)
        return CandidatePool(self.atoms, m[keep])

    def refined_by_boxes(self, boxes: np.ndarray) -> tuple["CandidatePool", np.ndarray]:
        """Split atoms so that each lies wholly inside or outside every box.

        Returns the refined pool (same candidates, finer atoms) and a (n_atoms, n_boxes) boolean
        matrix: whether each refined atom lies inside each box. With these atoms, sums restricted
        to a box are exact per-atom sums.
        """
        refined, parent, inside = split_atoms_by_boxes(self.atoms, boxes)
        return CandidatePool(refined, self.membership[:, parent]), inside


def split_atoms_by_boxes(atoms: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine an atom map by box membership: (refined map, parent atom of each, inside (A', B)).

    Each pixel gets a bit mask of the boxes containing it; a refined atom is one (atom, mask) pair.
    Everything is a bincount over pixels (no sort), so this costs a few passes over the image.
    """
    h, w = atoms.shape
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n_atoms = int(atoms.max()) + 1
    masks = np.zeros((h, w), dtype=np.int64)
    for i, (x0, y0, x1, y1) in enumerate(b):
        masks[y0:y1, x0:x1] |= 1 << i
    if len(b) <= 20:  # masks < 2^20: rank the distinct masks with a bincount
        present = np.bincount(masks.ravel(), minlength=1 << len(b)) > 0
        distinct = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        mask_rank = rank[masks]
    else:
        distinct, mask_rank = np.unique(masks, return_inverse=True)
        mask_rank = mask_rank.reshape(h, w)
    key = atoms.astype(np.int64) * len(distinct) + mask_rank
    used = np.bincount(key.ravel(), minlength=n_atoms * len(distinct)) > 0
    new_id = np.cumsum(used) - 1
    refined = new_id[key].astype(np.int32)
    keys = np.flatnonzero(used)
    parent = keys // len(distinct)
    atom_masks = distinct[keys % len(distinct)]
    inside_box = ((atom_masks[:, None] >> np.arange(len(b))[None, :]) & 1).astype(bool)
    return refined, parent, inside_box
