"""SBD reader (``benchmark_RELEASE/dataset/``): ``img/<id>.jpg``, ``cls/<id>.mat``, ``inst/<id>.mat``.

The ``.mat`` files are MATLAB structs read with ``scipy.io.loadmat`` (never pickle):
``GTcls`` (``Segmentation``: H x W class ids 0..20 in VOC order, plus ``Boundaries`` and
``CategoriesPresent``, unused) and ``GTinst`` (``Segmentation``: H x W instance ids, 0 background;
``Categories``: the VOC class of instance i at index i-1; ``Boundaries`` unused).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from boxsup.data.annotations import IGNORE, Box, ImageAnnotation
from boxsup.data.classes import ClassMapping
from boxsup.data.dataset import ListedDataset
from boxsup.data.images import SkipCounts
from boxsup.data.mask_boxes import boxes_from_class_mask, boxes_from_instances
from boxsup.data.voc import VOC_CLASSES
from boxsup.errors import BoxSupError

# What loadmat raises on a truncated, foreign or HDF5 (v7.3) file.
_MAT_ERRORS = (MatReadError, ValueError, TypeError, OSError, NotImplementedError, EOFError, IndexError, KeyError,
               zlib.error)


def _unwrap(value: Any) -> Any:
    """Strip the 1-element object arrays MATLAB cells and loadmat's nesting wrap values in."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.flat[0]
    return value


def read_mat_struct(path: Path, struct_name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """The named fields of the 1x1 struct ``struct_name`` in a ``.mat`` file; anything else is one line.

    Accepts the struct however loadmat nests it (a (1, 1) or 0-d record array, possibly inside an
    object array, as with or without ``squeeze_me``).
    """
    if not path.is_file():
        raise BoxSupError(f"{path}: .mat file not found")
    try:
        mat = scipy.io.loadmat(str(path))
    except _MAT_ERRORS as exc:
        raise BoxSupError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from None
    if struct_name not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise BoxSupError(f"{path}: no {struct_name} struct in the .mat file (found: {found})")
    record = _unwrap(mat[struct_name])
    if isinstance(record, np.ndarray) and record.dtype.names and record.size == 1:
        record = record.flat[0]
    names = getattr(getattr(record, "dtype", None), "names", None)
    if not isinstance(record, np.void) or not names:
        raise BoxSupError(f"{path}: {struct_name} is not a 1x1 MATLAB struct")
    missing = [f for f in fields if f not in names]
    if missing:
        raise BoxSupError(f"{path}: {struct_name} lacks field(s) {', '.join(missing)} (has: {', '.join(names)})")
    return {f: _unwrap(record[f]) for f in fields}


def integer_map(value: Any, path: Path, what: str) -> np.ndarray:
    """A 2-D array of whole numbers as int64; anything else is a one-line error naming ``path``."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.ndim != 2 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise BoxSupError(f"{path}: {what} must be a 2-D numeric matrix, got {arr.dtype} of shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        raise BoxSupError(f"{path}: {what} holds non-integer values")
    return arr.astype(np.int64)


class SBDDataset(ListedDataset):
    """One split of SBD (root: ``benchmark_RELEASE/dataset``), mapped onto the run's classes.

    Ids come from ``<root>/<split>.txt`` (train 8,498, val 2,857) or ``list_file``. Masks come
    from ``cls/<id>.mat``; boxes are the tight boxes of the instances in ``inst/<id>.mat``, or,
    when inst/ lacks the file, of the 8-connected regions of each class in the class map (counted
    in ``skips`` as "boxes from class-mask components").

    SBD's 20 classes are VOC's and map onto the run's by name through ``class_map`` (a run class,
    ``background``, or null). A VOC class the run lacks is dropped: its boxes are left out and
    counted per class (``mapping.dropped`` and ``skips``); its mask pixels become 0 when it is
    mapped to background and 255 (void) otherwise. Value 255 in a class or instance map is void.
    Missing or malformed ``.mat`` files, ids out of range and sizes that differ from the image are
    one-line errors naming the file.
    """

    def __init__(self, root: str | Path, classes: tuple[str, ...] | list[str] = VOC_CLASSES, split: str | None = "train",
                 list_file: str | Path | None = None, name: str | None = None,
                 class_map: dict[str, str | None] | None = None):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.skips = SkipCounts()
        self.name = name or "sbd"
        where = f"source {self.name!r} class_map"
        unknown = sorted(set(class_map or {}) - set(VOC_CLASSES))
        if unknown:
            raise BoxSupError(f"{where}: {unknown[0]!r} is not an SBD class (SBD's are VOC's: {', '.join(VOC_CLASSES)})")
        self.mapping = ClassMapping(self.classes, class_map, where=where)
        # source class id (0..20) -> run class id, None where the class is dropped
        self.source_to_run: list[int | None] = [0, *(self.mapping.id_of(n) for n in VOC_CLASSES)]
        if not any(self.source_to_run):
            raise BoxSupError(f"{where}: none of SBD's classes ({', '.join(VOC_CLASSES)}) is a class of this run "
                              f"({', '.join(self.classes)}); map them with class_map")
        self.lookup = np.full(256, IGNORE, dtype=np.uint8)
        for source_id, run_id in enumerate(self.source_to_run):
            self.lookup[source_id] = IGNORE if run_id is None else run_id
        self.read_ids(split, list_file, self._split_list)

    def _split_list(self, name: str) -> Path:
        path = self.root / f"{name}.txt"
        if not path.is_file():
            raise BoxSupError(f"{path}: split list not found (is the root SBD's benchmark_RELEASE/dataset?)")
        return path

    def image_path(self, image_id: str) -> Path:
        return self.root / "img" / f"{image_id}.jpg"

    def cls_path(self, image_id: str) -> Path:
        return self.root / "cls" / f"{image_id}.mat"

    def mask_location(self, image_id: str) -> str:
        return str(self.cls_path(image_id))

    def inst_path(self, image_id: str) -> Path:
        return self.root / "inst" / f"{image_id}.mat"

    def _checked(self, image_id: str, path: Path, labels: np.ndarray) -> None:
        self.check_mask_size(image_id, path, (labels.shape[1], labels.shape[0]))

    def source_mask(self, image_id: str) -> np.ndarray:
        """``GTcls.Segmentation`` as SBD class ids (0..20, 255 void), checked against the image's size."""
        path = self.cls_path(image_id)
        seg = integer_map(read_mat_struct(path, "GTcls", ("Segmentation",))["Segmentation"], path, "GTcls.Segmentation")
        bad = np.setdiff1d(np.unique(seg), [*range(len(VOC_CLASSES) + 1), IGNORE])
        if bad.size:
            raise BoxSupError(f"{path}: GTcls.Segmentation holds class ids {bad.tolist()} outside 0..{len(VOC_CLASSES)}")
        self._checked(image_id, path, seg)
        return seg

    def mask(self, image_id: str) -> np.ndarray:
        """The class map in run class ids (dropped classes 255, or 0 where mapped to background)."""
        return self.lookup[self.source_mask(image_id)]

    def _instances(self, image_id: str, path: Path) -> tuple[np.ndarray, list[int]]:
        """``GTinst``'s instance map and per-instance SBD class ids, checked."""
        fields = read_mat_struct(path, "GTinst", ("Segmentation", "Categories"))
        inst = integer_map(fields["Segmentation"], path, "GTinst.Segmentation")
        raw = fields["Categories"]
        cats = np.asarray(raw if raw is not None else [])
        numeric = np.issubdtype(cats.dtype, np.integer) or np.issubdtype(cats.dtype, np.floating)
        if cats.size and (not numeric or not np.array_equal(cats, np.round(cats))):
            raise BoxSupError(f"{path}: GTinst.Categories must be whole-number class ids, got {cats.dtype} {cats.ravel()[:5]}")
        categories = [int(c) for c in cats.ravel()] if cats.size else []
        bad = [c for c in categories if not 1 <= c <= len(VOC_CLASSES)]
        if bad:
            raise BoxSupError(f"{path}: GTinst.Categories holds class ids {bad} outside 1..{len(VOC_CLASSES)}")
        self._checked(image_id, path, inst)
        return inst, categories

    def annotation(self, image_id: str) -> ImageAnnotation:
        """Size and boxes (from the instances, else from class-map regions) in run class ids."""
        seg = self.source_mask(image_id)
        height, width = seg.shape
        inst_path = self.inst_path(image_id)
        notes: list[tuple[str, str]] = []
        if inst_path.is_file():
            inst, categories = self._instances(image_id, inst_path)
            try:
                source_boxes = boxes_from_instances(inst, categories)
            except ValueError as exc:
                raise BoxSupError(f"{inst_path}: GTinst.Segmentation: {exc}") from None
            where = str(inst_path)
        else:
            source_boxes = boxes_from_class_mask(seg)
            where = str(self.cls_path(image_id))
            notes.append(("boxes from class-mask components", f"{where} (no {inst_path})"))
        dropped: list[str] = []
        boxes = self._mapped(source_boxes, where, notes, dropped)
        if self.reports_skips_of(image_id):  # counted once, and only once the whole annotation is known to be good
            for reason, place in notes:
                self.skips.add(reason, place, quiet=True)
            for name in dropped:
                self.mapping.count_dropped(name)
        return ImageAnnotation(image_id, width, height, boxes, has_mask=True)

    def _mapped(self, source_boxes: list[Box], where: str, notes: list[tuple[str, str]], dropped: list[str]) -> list[Box]:
        """Boxes relabelled in run class ids; those of other classes noted, and their class names added to ``dropped``."""
        boxes = []
        for k, box in enumerate(source_boxes):
            run_id = self.source_to_run[box.label]
            if run_id:
                boxes.append(Box(box.x0, box.y0, box.x1, box.y1, run_id))
                continue
            name = VOC_CLASSES[box.label - 1]
            dropped.append(name)
            how = "mapped to background" if run_id == 0 else "not a class of this run"
            notes.append((f"class {name!r} {how}: box dropped", f"{where} box {k}"))
        return boxes

