"""ProposalStore: one compressed file per image holding its CandidatePool, written atomically.

Layout: ``STORE/meta.json`` (method, parameters, dataset and split that made the pools) and
``STORE/<image id>.npz`` with the atom map and the CSR membership arrays. The store is made once and
read every round; ``check_origin`` refuses it for another method, dataset or split.

What a build counts as already made is ``intact_ids``: the stored files whose zip directory and
the start of each array read, so a damaged file (a cut copy, garbage) is made again. Checking that costs a
few small reads per file and no decompression; a run whose store is complete does not pay even
that (its files were written whole, atomically). Damage inside the compressed data is found when
a round reads the file: the image sits that round out, counted, the file named.
``STORE`` is a local directory or a URI (``s3://bucket/prefix``; see ``boxsup.utils.storage``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from boxsup.errors import BoxSupError
from boxsup.proposals.pool import CandidatePool
from boxsup.utils.storage import open_location

log = logging.getLogger(__name__)

MEMBERS = ("atoms.npy", "indptr.npy", "indices.npy")  # the arrays of every proposal file
UNREADABLE_FILE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)  # what reading one raises


class ProposalFileMissing(BoxSupError):
    """An image has no proposal file in the store."""


# meta.json entries that must match for a store to serve a run (the seed of a method may differ).
ORIGIN_KEYS = ("method", "data_root", "split", "max_candidates", "max_side")


def _origin_text(meta: dict[str, Any]) -> str:
    side = f" at max_side {meta['max_side']}" if "max_side" in meta else ""
    return (f"{meta.get('method')!r} proposals for {meta.get('data_root')} split {meta.get('split')!r}{side} "
            f"(max_candidates {meta.get('max_candidates')})")


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

    def intact_ids(self) -> set[str]:
        """``stored_ids`` less the files that are damaged (each logged, naming it), so that a build makes
        them again. Reads each file's zip directory and the first bytes of its arrays, never the arrays."""
        stored = self.stored_ids()
        damaged = {image_id: why for image_id in sorted(stored) if (why := self.damage(image_id)) is not None}
        for image_id, why in damaged.items():
            log.warning("%s: corrupt proposal file (%s); made again", self.path(image_id), why)
        if damaged:
            log.warning("%s: %d corrupt proposal files made again (see the lines above)", self.root, len(damaged))
        return stored - damaged.keys()

    def damage(self, image_id: str) -> str | None:
        """What is wrong with the image's file, as far as its zip directory and the start of each array
        (the ``.npy`` magic) tell (a local file is read there only; a remote one is fetched); None if nothing."""
        path = self.path(image_id)
        try:
            source = path if isinstance(path, Path) else io.BytesIO(self.location.read_bytes(f"{image_id}.npz"))
            with zipfile.ZipFile(source) as archive:
                lacking = [name for name in MEMBERS if name not in archive.namelist()]
                if lacking:
                    return f"no array {lacking[0][:-4]!r}"
                for name in MEMBERS:
                    with archive.open(name) as member:
                        np.lib.format.read_magic(member)
        except UNREADABLE_FILE as exc:
            return str(exc) or type(exc).__name__
        return None

    def read_meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.location.read_bytes("meta.json"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BoxSupError(f"{self.meta_path}: corrupt store metadata ({exc})") from None

    def check_origin(self, expected: dict[str, Any]) -> None:
        """Refuse this store unless its meta.json records ``expected``'s method, dataset, split, cap and max_side.

        ``expected`` is what ``boxsup.proposals.generate.store_meta`` gives for this use. An empty
        store passes; pools without a meta.json were not made here and are refused.
        """
        meta = self.read_meta()
        if meta is None:
            if self.stored_ids():
                raise BoxSupError(f"{self.meta_path}: no meta.json: not made by boxsup proposals; "
                                  "choose another proposals.store")
            return
        if any(meta.get(key) != expected.get(key) for key in ORIGIN_KEYS):
            raise BoxSupError(f"{self.meta_path}: store holds {_origin_text(meta)}, not {_origin_text(expected)}; "
                              "choose another proposals.store")

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.location.write_bytes("meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())

    def save(self, image_id: str, pool: CandidatePool) -> None:
        atoms = pool.atoms.astype(np.uint16) if pool.n_atoms <= 65536 else pool.atoms
        m = pool.membership
        indices = m.indices.astype(np.uint16) if pool.n_atoms <= 65536 else m.indices
        buffer = io.BytesIO()
        np.savez_compressed(buffer, atoms=atoms, indptr=m.indptr.astype(np.int64), indices=indices)
        self.location.write_bytes(f"{image_id}.npz", buffer.getvalue())

    def _read(self, image_id: str, keys: tuple[str, ...], expected_shape: tuple[int, int] | None) -> list[np.ndarray]:
        """The arrays ``keys`` (atoms first) of one image; ``expected_shape``: the image's (height, width)."""
        arrays = self._read_arrays(image_id, keys)
        shape = tuple(arrays[0].shape)
        if expected_shape is not None and shape != tuple(expected_shape):
            raise BoxSupError(f"{self.path(image_id)}: proposal atoms are {'x'.join(map(str, shape))}, the image is "
                              f"{'x'.join(map(str, expected_shape))}: a store made for another dataset?")
        return arrays

    def _read_arrays(self, image_id: str, keys: tuple[str, ...]) -> list[np.ndarray]:
        try:
            data = self.location.read_bytes(f"{image_id}.npz")
        except FileNotFoundError:
            raise ProposalFileMissing(f"{self.path(image_id)}: proposal file missing "
                                      "(rebuild with `boxsup proposals`)") from None
        try:
            with np.load(io.BytesIO(data)) as f:
                return [f[k] for k in keys]
        except UNREADABLE_FILE as exc:
            raise BoxSupError(f"{self.path(image_id)}: corrupt proposal file ({exc}); delete it, or run "
                              "`boxsup proposals` on the store, to make it again") from None

    def load_atoms(self, image_id: str, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Only the atom map: what a Train worker needs to reduce per-pixel losses.

        ``expected_shape``: the image's (height, width); atoms of another shape are refused.
        """
        return self._read(image_id, ("atoms",), expected_shape)[0].astype(np.int32)

    def load(self, image_id: str, expected_shape: tuple[int, int] | None = None) -> CandidatePool:
        """The image's candidate pool; ``expected_shape`` as for ``load_atoms``."""
        atoms, indptr, indices = self._read(image_id, ("atoms", "indptr", "indices"), expected_shape)
        atoms, indices = atoms.astype(np.int32), indices.astype(np.int32)
        n_atoms = int(atoms.max()) + 1 if atoms.size else 0
        data = np.ones(len(indices), dtype=np.float32)
        return CandidatePool(atoms, sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_atoms)))
