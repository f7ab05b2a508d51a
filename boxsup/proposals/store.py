"""ProposalStore: one compressed file per image holding its CandidatePool, written atomically.

Layout: ``STORE/meta.json`` (method and parameters that made the pool) and ``STORE/<image id>.npz``
with the atom map and the CSR membership arrays. The store is made once and read every round.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from boxsup.errors import BoxSupError
from boxsup.proposals.pool import CandidatePool
from boxsup.utils.files import atomic_path, write_text_atomic


class ProposalStore:
    """A directory of per-image candidate pools made by one proposal method."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.npz"

    def has(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.is_file():
            return None
        try:
            return json.loads(self.meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise BoxSupError(f"{self.meta_path}: corrupt store metadata ({exc})") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_text_atomic(self.meta_path, json.dumps(meta, indent=2, sort_keys=True))

    def save(self, image_id: str, pool: CandidatePool) -> None:
        atoms = pool.atoms.astype(np.uint16) if pool.n_atoms <= 65536 else pool.atoms
        m = pool.membership
        indices = m.indices.astype(np.uint16) if pool.n_atoms <= 65536 else m.indices
        with atomic_path(self.path(image_id), suffix=".npz") as tmp:
            np.savez_compressed(tmp, atoms=atoms, indptr=m.indptr.astype(np.int64), indices=indices)

    def _read(self, image_id: str, keys: tuple[str, ...]) -> list[np.ndarray]:
        path = self.path(image_id)
        if not path.is_file():
            raise BoxSupError(f"{path}: proposal file missing (rebuild with `boxsup proposals`)")
        try:
            with np.load(path) as f:
                return [f[k] for k in keys]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise BoxSupError(f"{path}: corrupt proposal file ({exc})") from None

    def load_atoms(self, image_id: str) -> np.ndarray:
        """Only the atom map: what a Train worker needs to reduce per-pixel losses."""
        return self._read(image_id, ("atoms",))[0].astype(np.int32)

    def load(self, image_id: str) -> CandidatePool:
        atoms, indptr, indices = self._read(image_id, ("atoms", "indptr", "indices"))
        atoms, indices = atoms.astype(np.int32), indices.astype(np.int32)
        n_atoms = int(atoms.max()) + 1 if atoms.size else 0
        data = np.ones(len(indices), dtype=np.float32)
        return CandidatePool(atoms, sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_atoms)))
