"""Import published MCG proposals (one ``<id>.mat`` per image) into a ProposalStore.

An MCG file is already a candidate pool: ``superpixels`` (H x W, ids 1..N) are the atoms and the
``labels`` cell array (entry i: the 1-based superpixel ids of candidate i) is the membership;
``scores`` ranks the candidates, higher first. ``bboxes``, when present, is ignored (its column
order differs between releases; boxes follow from the superpixels). Files are read with
``scipy.io.loadmat`` only, so MATLAB v7.3 (HDF5) files must be re-saved with ``-v7``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp

from boxsup.data.dataset import SegmentationDataset
from boxsup.errors import BoxSupError
from boxsup.proposals.generate import NO_CANDIDATE, BuildReport, store_meta
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.store import ProposalStore
from boxsup.utils.progress import progress_bar

log = logging.getLogger(__name__)

FIELDS = ("superpixels", "labels", "scores")
MISSING = "no .mat file"
MALFORMED = "malformed .mat"
SIZE = "superpixel map size differs from the image"
UNREADABLE_IMAGE = "unreadable image"
LOGGED_MISSING = 5  # missing files logged one by one; the rest only counted


class MalformedMatError(BoxSupError):
    """An MCG ``.mat`` that is not a MAT file or lacks the released fields (skipped on import)."""


class MatSizeError(BoxSupError):
    """An MCG superpixel map whose size is not its image's (skipped on import)."""

    def __init__(self, path: Path, found: tuple[int, int], expected: tuple[int, int]):
        self.path, self.found, self.expected = path, found, expected
        super().__init__(self.describe("the image"))

    def describe(self, image: str) -> str:
        """The one-line message, naming the image as ``image``."""
        return (f"{self.path}: superpixel map is {self.found[0]}x{self.found[1]} but {image} is "
                f"{self.expected[0]}x{self.expected[1]} (width x height)")


@dataclass
class ImportReport(BuildReport):
    """What ``import_mcg`` did: pools made, pools already there, and images skipped by reason."""

    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first message of that kind

    @property
    def left_out(self) -> int:
        """Images that got no pool (a pool without candidates is still stored)."""
        return sum(n for why, n in self.skipped.items() if why != NO_CANDIDATE)

    def skip(self, reason: str, message: str, quiet: bool = False) -> None:
        """Count one skipped image; logged as a warning unless ``quiet``."""
        self.skipped[reason] += 1
        self.examples.setdefault(reason, message)
        if not quiet:
            log.warning("skipped %s", message)


def _column(value: np.ndarray, path: Path, name: str) -> np.ndarray:
    """An N x 1 (or 1 x N) MATLAB array as a flat array; anything else is malformed."""
    if value.ndim > 2 or (value.ndim == 2 and 1 not in value.shape and value.size):
        raise MalformedMatError(f"{path}: `{name}` must be an N x 1 array, got shape {value.shape}")
    return value.ravel()


def _integral(values: np.ndarray) -> bool:
    """Whether a numeric array holds whole numbers only (integer types, or floats without fractions)."""
    if values.dtype.kind in "iu":
        return True
    return values.dtype.kind == "f" and bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _load(path: Path) -> dict[str, np.ndarray]:
    """The three released variables of one file, via ``scipy.io.loadmat``."""
    try:
        contents = scipy.io.loadmat(str(path), variable_names=FIELDS)
    except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
        raise BoxSupError(f"{path}: MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save the MCG files with "
                          "`-v7`, e.g. in MATLAB: load(f); save(f, 'superpixels', 'labels', 'scores', '-v7')") from None
    except Exception as exc:  # a foreign file: scipy raises many kinds of error on garbage or truncation
        reason = " ".join(str(exc).split())  # one line whatever scipy says
        raise MalformedMatError(f"{path}: not a readable MAT file ({type(exc).__name__}: {reason})") from None
    for name in FIELDS:
        if name not in contents:
            raise MalformedMatError(f"{path}: no `{name}` variable (an MCG file holds {', '.join(FIELDS)})")
    return contents


def read_mcg_mat(
    path: str | os.PathLike, expected_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Read one MCG file: (atoms, candidates, scores), candidates in file order.

    ``atoms``: H x W int32, superpixel id - 1, compacted to 0..A-1 when some ids have no pixel.
    ``candidates[i]``: the atom ids of candidate i (superpixels without pixels left out; may be
    empty). ``scores``: float64, one per candidate. ``expected_size``: the image's (width, height);
    a superpixel map of another size raises ``MatSizeError``. A file without the released fields,
    wrong-typed ones or label ids outside 1..N raises ``MalformedMatError``.
    """
    path = Path(path)
    contents = _load(path)
    superpixels, labels, scores = (np.asarray(contents[name]) for name in FIELDS)

    if superpixels.ndim != 2 or not superpixels.size or superpixels.dtype.kind not in "iuf" or not _integral(superpixels):
        raise MalformedMatError(f"{path}: `superpixels` must be a non-empty H x W map of integer ids, "
                                f"got {superpixels.dtype} of shape {superpixels.shape}")
    height, width = superpixels.shape
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise MatSizeError(path, (width, height), (int(expected_size[0]), int(expected_size[1])))
    ids, inverse = np.unique(superpixels, return_inverse=True)
    if ids[0] < 1:
        raise MalformedMatError(f"{path}: `superpixels` holds id {ids[0]:g}; MCG ids start at 1")
    n_superpixels = int(ids[-1])
    atoms = inverse.reshape(height, width).astype(np.int32)

    if labels.dtype != object or labels.dtype.names is not None:
        raise MalformedMatError(f"{path}: `labels` must be an N x 1 cell array of superpixel ids, got {labels.dtype} "
                                f"of shape {labels.shape}")
    cells = _column(labels, path, "labels")
    if scores.dtype.kind not in "iuf":
        raise MalformedMatError(f"{path}: `scores` must be numeric, got {scores.dtype}")
    scores = _column(scores, path, "scores").astype(np.float64)
    if len(scores) != len(cells):
        raise MalformedMatError(f"{path}: {len(scores)} scores for {len(cells)} labels")
    if not np.all(np.isfinite(scores)):
        raise MalformedMatError(f"{path}: `scores` holds NaN or infinite values")

    members = []
    for i, cell in enumerate(cells):
        cell = np.asarray(cell)
        if cell.size and cell.dtype.kind not in "iuf":
            raise MalformedMatError(f"{path}: labels{{{i + 1}}} must hold integer superpixel ids, got {cell.dtype}")
        members.append(cell.ravel() if cell.size else np.zeros(0, np.int64))
    lengths = np.array([len(m) for m in members], dtype=np.int64)
    ends = np.cumsum(lengths)
    values = np.concatenate(members).astype(np.float64) if members else np.zeros(0)  # one check for all cells
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 1) | (values > n_superpixels)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        cell = int(np.searchsorted(ends, first, side="right"))
        raise MalformedMatError(f"{path}: labels{{{cell + 1}}} holds superpixel id {values[first]:g}, "
                                f"outside 1..{n_superpixels}")
    flat = values.astype(np.int64)
    position = np.searchsorted(ids, flat)
    present = ids[position] == flat  # ids inside 1..N that no pixel carries are left out
    atom_of = np.where(present, position, -1)
    candidates = [a[a >= 0].astype(np.int32) for a in np.split(atom_of, ends[:-1])] if members else []
    return atoms, candidates, scores


def mcg_pool(atoms: np.ndarray, candidates: list[np.ndarray], scores: np.ndarray, max_candidates: int) -> CandidatePool:
    """The pool of the best ``max_candidates`` non-empty candidates by score, best first (ties: file order)."""
    nonempty = np.array([len(c) > 0 for c in candidates], dtype=bool)
    keep = np.flatnonzero(nonempty)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_candidates]
    chosen = [candidates[i] for i in keep]
    rows = np.repeat(np.arange(len(chosen)), [len(c) for c in chosen])
    cols = np.concatenate(chosen) if chosen else np.zeros(0, np.int32)
    n_atoms = int(atoms.max()) + 1
    membership = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(chosen), n_atoms))
    return CandidatePool(atoms, membership)


def load_mcg_pool(
    path: str | os.PathLike, max_candidates: int, expected_size: tuple[int, int] | None = None
) -> CandidatePool:
    """``read_mcg_mat`` then ``mcg_pool``: one file as the pool a store holds."""
    return mcg_pool(*read_mcg_mat(path, expected_size), max_candidates)


def _mat_stems(mat_dir: Path) -> set[str]:
    """The stems of every ``.mat`` file in ``mat_dir``, from one listing."""
    if not mat_dir.is_dir():
        raise BoxSupError(f"{mat_dir}: MCG .mat directory not found")
    with os.scandir(mat_dir) as entries:
        return {e.name[: -len(".mat")] for e in entries if e.name.endswith(".mat")}


def import_mcg(
    dataset: SegmentationDataset,
    mat_dir: str | os.PathLike,
    store: ProposalStore,
    max_candidates: int,
    progress: bool = True,
) -> ImportReport:
    """Fill ``store`` with the pool of every image of ``dataset`` from ``<mat_dir>/<id>.mat``.

    Pools already in the store are kept (an interrupted import resumes). A store made by another
    method or for another dataset is refused. An image without its file, with a malformed file or
    with a superpixel map of another size is skipped, counted and logged naming the file; when no
    image has a file at all, or a file is MATLAB v7.3, the import stops with a one-line error.
    """
    if max_candidates < 1:
        raise BoxSupError(f"max_candidates must be >= 1, got {max_candidates}")
    mat_dir = Path(mat_dir)
    meta = store_meta(dataset, "mcg", max_candidates, seed=0)
    store.check_origin(meta)
    stems = _mat_stems(mat_dir)
    stored = store.intact_ids()  # a damaged file is imported again
    if any(image_id not in stored for image_id in dataset.ids) and not any(i in stems for i in dataset.ids):
        example = mat_dir / f"{dataset.ids[0]}.mat" if dataset.ids else mat_dir
        raise BoxSupError(f"{mat_dir}: no MCG .mat file for any of the {len(dataset.ids)} images "
                          f"(expected <image id>.mat, e.g. {example})")
    store.write_meta(meta)
    report = ImportReport()
    for image_id in progress_bar(dataset.ids, desc="proposals[mcg]", enabled=progress, unit="img"):
        if image_id in stored:
            report.reused += 1
            continue
        path = mat_dir / f"{image_id}.mat"
        if image_id not in stems:
            report.skip(MISSING, f"{path}: no MCG .mat file for image {image_id!r}",
                        quiet=report.skipped[MISSING] >= LOGGED_MISSING)
            continue
        try:
            size = dataset.image_size(image_id)
        except BoxSupError as exc:
            report.skip(UNREADABLE_IMAGE, str(exc))
            continue
        try:
            pool = load_mcg_pool(path, max_candidates, size)
        except MatSizeError as exc:
            report.skip(SIZE, exc.describe(f"the image {dataset.image_path(image_id)}"))
            continue
        except MalformedMatError as exc:
            report.skip(MALFORMED, str(exc))
            continue
        if pool.n_candidates == 0:
            report.skipped[NO_CANDIDATE] += 1
            log.warning("%s: no non-empty candidate; the image will be skipped in label updates", path)
        store.save(image_id, pool)
        report.made += 1
    if report.skipped[MISSING] > LOGGED_MISSING:
        log.warning("%d images have no .mat file in %s (the first %d are named above)",
                    report.skipped[MISSING], mat_dir, LOGGED_MISSING)
    return report
