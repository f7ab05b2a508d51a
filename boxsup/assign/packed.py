"""PackedPool: a candidate pool in the compact, read-only form an actor's cache holds.

A ``CandidatePool`` keeps the atom map as H x W int32 and the membership as CSR with int32 indices
and float32 ones: 5-18 MB at VOC size with 2,000 Selective Search candidates. Here:

- the atom map is run-length encoded over the raster (atom id and length of every run);
- candidates that form a *laminar* family (any two disjoint or nested: every merge tree of
  Selective Search, MCG's hierarchy) are stored as a *nest*: one ordering of the atoms in which
  every member's atoms are a contiguous range, so a member costs two integers. Nests are found
  greedily from the membership alone (largest candidates first, each into the first nest it is
  laminar with), so any pool packs, whatever made it;
- the candidates no nest takes (at most ``MAX_NESTS`` nests) keep a pattern-only CSR with
  uint16 atom indices (no stored ones).

Per-candidate sums are a prefix sum over each nest's ordering followed by one difference per
member, and a ``np.add.reduceat`` over the rest. They equal the CSR product exactly whenever every
partial sum is exact in float64: always for pixel counts, and for the label update's losses, which
are float16 per-atom means times integer areas (multiples of 2^-24 summing to < 2^29 for images
below ~500 Mpx with means <= 1), so the label maps are bit-identical to the CSR path. For arbitrary
float64 values the difference of prefix sums differs from a direct sum by rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from boxsup.proposals.pool import CandidatePool

MAX_NESTS = 32  # laminar groups tried per candidate before it goes to the plain CSR rest
ARRAY_OVERHEAD = 112  # bytes of a numpy array object besides its data (counted in ``nbytes``)
OBJECT_OVERHEAD = 512  # bytes of the Python objects around the arrays, per pool (an estimate)


def _index_dtype(largest: int) -> type[np.integer]:
    """The smallest unsigned type holding 0..largest (uint16 for VOC-sized pools)."""
    for dtype in (np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return dtype
    return np.int64


def _arrays_nbytes(obj: object) -> int:
    """Data plus array-object bytes of the numpy arrays among a dataclass's fields."""
    arrays = [getattr(obj, f.name) for f in fields(obj)]  # type: ignore[arg-type]
    return sum(a.nbytes + ARRAY_OVERHEAD for a in arrays if isinstance(a, np.ndarray))


@dataclass
class Nest:
    """A laminar group of candidates: candidate ``rows[i]`` covers atoms ``order[start[i]:stop[i]]``."""

    rows: np.ndarray  # (n,) candidate indices, ascending
    order: np.ndarray  # (A,) atom ids
    start: np.ndarray  # (n,)
    stop: np.ndarray  # (n,)

    @property
    def nbytes(self) -> int:
        return _arrays_nbytes(self)


@dataclass
class PackedPool:
    """The same candidates as a ``CandidatePool`` (same indices, same atoms) in a few hundred KB.

    Offers what the label update uses of a pool: ``n_atoms``, ``n_candidates``, ``atom_areas``,
    ``sum_over_candidates``, ``candidate_atoms`` and ``expand`` (atom values to a full map);
    ``atoms`` decodes the whole map (one pass; for statistics read once per image).
    """

    shape: tuple[int, int]
    n_atoms: int
    n_candidates: int
    run_atoms: np.ndarray  # (R,) atom id of every run of the raster-order atom map
    run_lengths: np.ndarray  # (R,) pixels in every run
    areas: np.ndarray  # (A,) int32 pixels per atom
    nests: list[Nest]
    rest_rows: np.ndarray  # (C_rest,) candidates in no nest, ascending
    rest_indptr: np.ndarray  # (C_rest + 1,) int64
    rest_indices: np.ndarray  # (nnz_rest,) atom ids

    @classmethod
    def from_pool(cls, pool: CandidatePool, max_nests: int = MAX_NESTS) -> "PackedPool":
        """Pack ``pool``; candidate indices and atom ids are kept as they are."""
        h, w = pool.shape
        flat = pool.atoms.ravel()
        atom_type = _index_dtype(max(pool.n_atoms - 1, 0))
        if flat.size:
            starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
            lengths = np.diff(np.append(starts, flat.size))
            run_atoms, run_lengths = flat[starts].astype(atom_type), lengths.astype(_index_dtype(int(lengths.max())))
        else:
            run_atoms, run_lengths = np.zeros(0, atom_type), np.zeros(0, np.uint16)
        membership = pool.membership.tocsr()
        membership.sort_indices()
        nests, rest_rows = _nests(membership.indptr, membership.indices, pool.n_atoms, max_nests)
        row_type = _index_dtype(max(pool.n_candidates - 1, 0))
        rest = np.sort(np.asarray(rest_rows, dtype=np.int64))
        rest_lengths = np.diff(membership.indptr)[rest]
        rest_indptr = np.concatenate([[0], np.cumsum(rest_lengths)]).astype(np.int64)
        rest_parts = [membership.indices[membership.indptr[r]:membership.indptr[r + 1]] for r in rest]
        rest_indices = np.concatenate(rest_parts) if rest_parts else np.zeros(0, np.int64)
        packed_nests = [Nest(rows.astype(row_type), order.astype(atom_type), start.astype(_index_dtype(pool.n_atoms)),
                             stop.astype(_index_dtype(pool.n_atoms))) for rows, order, start, stop in nests]
        return cls((h, w), pool.n_atoms, pool.n_candidates, run_atoms, run_lengths,
                   pool.atom_areas().astype(np.int32), packed_nests, rest.astype(row_type), rest_indptr,
                   rest_indices.astype(atom_type))

    # ---- what the label update uses ---------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Memory held: array data, array objects and an estimate of the Python objects around them."""
        return _arrays_nbytes(self) + sum(n.nbytes for n in self.nests) + OBJECT_OVERHEAD

    @property
    def atoms(self) -> np.ndarray:
        """The atom map (H, W) int32, decoded (one pass over the pixels)."""
        return np.repeat(self.run_atoms.astype(np.int32), self.run_lengths).reshape(self.shape)

    def expand(self, atom_values: np.ndarray) -> np.ndarray:
        """A full map (H, W) from one value per atom: ``atom_values[atoms]`` without the atom map."""
        return np.repeat(atom_values[self.run_atoms], self.run_lengths).reshape(self.shape)

    def atom_areas(self) -> np.ndarray:
        return self.areas.astype(np.float64)

    def sum_over_candidates(self, atom_values: np.ndarray) -> np.ndarray:
        """Per-candidate sums (C,) or (C, K) float64 of per-atom values (A,) or (A, K)."""
        values = np.asarray(atom_values, dtype=np.float64)
        out = np.zeros((self.n_candidates, *values.shape[1:]))
        for nest in self.nests:
            prefix = np.zeros((self.n_atoms + 1, *values.shape[1:]))
            np.cumsum(values[nest.order], axis=0, out=prefix[1:])
            out[nest.rows] = prefix[nest.stop] - prefix[nest.start]
        if len(self.rest_rows):
            nonempty = np.diff(self.rest_indptr) > 0
            gathered = values[self.rest_indices]
            if len(gathered):
                out[self.rest_rows[nonempty]] = np.add.reduceat(gathered, self.rest_indptr[:-1][nonempty], axis=0)
        return out

    def candidate_atoms(self, index: int) -> np.ndarray:
        """The atom ids of one candidate (in no particular order)."""
        for nest in self.nests:
            at = int(np.searchsorted(nest.rows, index))
            if at < len(nest.rows) and nest.rows[at] == index:
                return nest.order[int(nest.start[at]):int(nest.stop[at])].astype(np.int64)
        at = int(np.searchsorted(self.rest_rows, index))
        if at == len(self.rest_rows) or self.rest_rows[at] != index:
            raise IndexError(f"candidate {index} out of range for {self.n_candidates} candidates")
        return self.rest_indices[self.rest_indptr[at]:self.rest_indptr[at + 1]].astype(np.int64)


def _nests(
    indptr: np.ndarray, indices: np.ndarray, n_atoms: int, max_nests: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], list[int]]:
    """Greedy laminar groups of the CSR rows: (rows, order, start, stop) per nest, and the rows left over.

    Rows go largest first; a row joins a nest when all its atoms have the same innermost member
    there (it then lies inside that member, or outside every member, and cannot cross a smaller
    one). Empty rows go to the rest.
    """
    sizes = np.diff(indptr)
    innermost = np.full((max_nests, n_atoms), -1, dtype=np.int32)  # per nest: each atom's innermost member so far
    members: list[list[int]] = []  # per nest: rows, in insertion order
    parents: list[list[int]] = []  # per nest: position of each member's parent (-1: a root)
    rest: list[int] = []
    for row in np.argsort(-sizes, kind="stable").tolist():
        atoms = indices[indptr[row]:indptr[row + 1]]
        if len(atoms) == 0:
            rest.append(row)
            continue
        probe = innermost[: len(members), atoms[:: max(1, len(atoms) // 8)]]  # most misfits show on a few atoms
        nest = -1
        for candidate in np.flatnonzero((probe == probe[:, :1]).all(axis=1)).tolist():
            found = innermost[candidate][atoms]
            if found.min() == found.max():
                nest = candidate
                break
        if nest < 0:
            if len(members) == max_nests:
                rest.append(row)
                continue
            nest = len(members)
            members.append([])
            parents.append([])
        inner = innermost[nest]
        parents[nest].append(int(inner[atoms[0]]))
        inner[atoms] = len(members[nest])
        members[nest].append(row)
    return [_nest_layout(np.array(m), p, inner, sizes) for m, p, inner in zip(members, parents, innermost)], rest


def _nest_layout(
    rows: np.ndarray, parents: list[int], innermost: np.ndarray, sizes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order the atoms by the depth-first position of their innermost member: every member is a range.

    A member's subtree holds consecutive depth-first positions, so the atoms whose innermost member
    lies in it (exactly the member's atoms) are consecutive once sorted by that position.
    """
    children: list[list[int]] = [[] for _ in rows]
    roots: list[int] = []
    for member, parent in enumerate(parents):
        (roots if parent < 0 else children[parent]).append(member)
    preorder = np.empty(len(rows) + 1, dtype=np.int64)  # the last slot: atoms in no member
    preorder[-1] = -1
    stack, position = roots[::-1], 0
    while stack:
        member = stack.pop()
        preorder[member] = position
        position += 1
        stack.extend(children[member][::-1])
    keys = preorder[innermost]  # innermost -1 picks the last slot
    order = np.argsort(keys, kind="stable")
    start = np.searchsorted(keys[order], preorder[:-1])
    stop = start + sizes[rows]
    by_row = np.argsort(rows)
    return rows[by_row], order, start[by_row], stop[by_row]
