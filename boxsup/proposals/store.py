"""ProposalStore: one compressed file per image holding its CandidatePool, written atomically.

Layout: ``STORE/meta.json`` (method and parameters that made the pool) and ``STORE/<image id>.npz``
with the atom map and the CSR membership arrays. The store is made once and read every round.
``STORE`` is a local directory or a URI (``s3://bucket/prefix``; see ``boxsup.utils.storage``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from boxsup.errors import BoxSupError
from boxsup.proposals.pool import CandidatePool
from boxsup.utils.storage import open_location


class ProposalStore:
    """A directory (or URI prefix) of per-image candidate pools made by one proposal method."""

    def __init__(self, root: str | os.PathLike):
        self.location = open_location(root)
        self.root = self.location.root

    @property
    def meta_path(self) -> Path | str:
        return self.location.path("meta.json")

    def path(self, image_id: str) -> Path | str:
        return self.location.path(f"{image_id}.npz")

    def has(self, image_id: str) -> bool:
        return self.location.exists(f"{image_id}.npz")

    def stored_ids(self) -> set[str]:
        """The ids of every image with a proposal file here, from one listing."""
        return {name[: -len(".npz")] for name in self.location.list() if name.endswith(".npz") and not name.startswith(".")}

    def read_meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.location.read_bytes("meta.json"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BoxSupError(f"{self.meta_path}: corrupt store metadata ({exc})") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.location.write_bytes("meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())

    def save(self, image_id: str, pool: CandidatePool) -> None:
        atoms = pool.atoms.astype(np.uint16) if pool.n_atoms <= 65536 else pool.atoms
        m = pool.membership
        indices = m.indices.astype(np.uint16) if pool.n_atoms <= 65536 else m.indices
        buffer = io.BytesIO()
        np.savez_compressed(buffer, atoms=atoms, indptr=m.indptr.astype(np.int64), indices=indices)
        self.location.write_bytes(f"{image_id}.npz", buffer.getvalue())

    def _read(self, image_id: str, keys: tuple[str, ...]) -> list[np.ndarray]:
        try:
            data = self.location.read_bytes(f"{image_id}.npz")
        except FileNotFoundError:
            raise BoxSupError(f"{self.path(image_id)}: proposal file missing (rebuild with `boxsup proposals`)") from None
        try:
            with np.load(io.BytesIO(data)) as f:
                return [f[k] for k in keys]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise BoxSupError(f"{self.path(image_id)}: corrupt proposal file ({exc})") from None

    def load_atoms(self, image_id: str) -> np.ndarray:
        """Only the atom map: what a Train worker needs to reduce per-pixel losses."""
        return self._read(image_id, ("atoms",))[0].astype(np.int32)

    def load(self, image_id: str) -> CandidatePool:
        atoms, indptr, indices = self._read(image_id, ("atoms", "indptr", "indices"))
        atoms, indices = atoms.astype(np.int32), indices.astype(np.int32)
        n_atoms = int(atoms.max()) + 1 if atoms.size else 0
        data = np.ones(len(indices), dtype=np.float32)
        return CandidatePool(atoms, sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_atoms)))
