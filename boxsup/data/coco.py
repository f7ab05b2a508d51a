"""MS COCO instances reader: ``annotations/instances_<split>.json`` plus an image folder, through pycocotools.

Ids are the images' file-name stems (``COCO_train2014_000000000009``) in ascending COCO image id
order. Boxes come from ``bbox`` [x, y, w, h] (floats, 0-based): the smallest whole-pixel box that
holds it, clipped to the image. Crowd regions (``iscrowd=1``) never become boxes and are void in
masks. Category names map onto the run's classes by name (COCO's "airplane" is VOC's "aeroplane");
categories the run does not know are dropped and counted per class, never an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from boxsup.data.annotations import BACKGROUND, IGNORE, ZERO_WIDTH_BOX, Box, ImageAnnotation
from boxsup.data.classes import ClassMapping, coco_aliases
from boxsup.data.dataset import SegmentationDataset
from boxsup.data.images import SizeMismatchError, SkipCounts, size_text
from boxsup.errors import BoxSupError
from boxsup.utils.lists import names_text

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("images", "annotations", "categories")
IMAGE_FIELDS = ("id", "file_name", "width", "height")
ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox")  # iscrowd (default 0) and segmentation are optional
CATEGORY_FIELDS = ("id", "name")
_EPS = 1e-6  # float noise in bbox sums (x + w = 100.00000000001) does not widen a box by a pixel


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has_segmentation(ann: dict[str, Any]) -> bool:
    """Whether an annotation carries a polygon or an RLE (an empty list or a missing field does not)."""
    return bool(ann.get("segmentation"))


def _is_crowd(ann: dict[str, Any]) -> bool:
    return bool(ann.get("iscrowd", 0))


def coco_box(bbox: list[float]) -> tuple[int, int, int, int]:
    """COCO's [x, y, w, h] (0-based floats) as the whole-pixel end-exclusive (x0, y0, x1, y1) that holds it."""
    x, y, w, h = bbox
    return math.floor(x + _EPS), math.floor(y + _EPS), math.ceil(x + w - _EPS), math.ceil(y + h - _EPS)


class CocoDataset(SegmentationDataset):
    """One COCO instances file and its image folder.

    The JSON is read and checked once, then indexed by pycocotools (per-image annotation lists), so
    ``annotation(id)`` and ``mask(id)`` touch only that image's objects. ``annotation`` checks the
    JSON's width/height against the upright image and gives the clipped boxes of non-crowd objects
    of the run's classes; ``mask`` paints polygons/RLE (larger objects first, so small ones stay on
    top; crowds and objects without a segmentation void; categories the run does not know
    background, those ``class_map`` maps to null void), or gives None when none of the image's
    objects has a segmentation.
    """

    def __init__(self, annotations: str | Path, images: str | Path, classes: tuple[str, ...] | list[str],
                 name: str | None = None, class_map: dict[str, str | None] | None = None):
        self.list_file = Path(annotations)
        self.images_dir = Path(images)
        self.classes = tuple(classes)
        self.name = name or self.list_file.stem
        self.skips = SkipCounts()
        self.mapping = ClassMapping(self.classes, class_map, aliases=coco_aliases(self.classes),
                                    where=f"source {self.name!r} class_map")
        self.coco = self._index(read_coco_json(self.list_file))
        self._category = {cat_id: (cat["name"], self.mapping.id_of(cat["name"])) for cat_id, cat in self.coco.cats.items()}
        self._paint = {cat_id: self._mask_value(name, label) for cat_id, (name, label) in self._category.items()}
        names = {name for name, _ in self._category.values()}
        unknown = sorted(set(self.mapping.class_map) - names)
        if unknown:  # most likely a typo (or VOC's name for a COCO category)
            raise BoxSupError(f"source {self.name!r} class_map: {unknown[0]!r} is not a category of {self.list_file} "
                              f"(its categories: {names_text(sorted(names))})")
        self._image_of: dict[str, dict[str, Any]] = {}
        for coco_id in sorted(self.coco.imgs):
            record = self.coco.imgs[coco_id]
            stem = Path(record["file_name"]).stem
            other = self._image_of.setdefault(stem, record)
            if other is not record:
                raise BoxSupError(f"{self.list_file}: images {other['id']} and {coco_id} share the file stem {stem!r} "
                                  "(image ids are file stems and must be unique)")
        self.ids = list(self._image_of)
        if not self.ids:
            raise BoxSupError(f"{self.list_file}: holds no images")

    def _mask_value(self, name: str, label: int | None) -> int:
        """What a category's pixels become in masks: its run class; void where class_map maps it to null
        (the user said "do not use"); background for a category the run does not know or maps to background."""
        if label:
            return label
        return IGNORE if name in self.mapping.class_map and self.mapping.class_map[name] is None else BACKGROUND

    @staticmethod
    def _index(data: dict[str, Any]) -> COCO:
        """pycocotools' indices (image id -> record, -> its annotations) over the checked JSON, its prints kept quiet."""
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    # ------------------------------------------------------------------ the dataset interface

    def origin(self) -> dict[str, str]:
        return {"data_root": str(self.images_dir.resolve()), "split": self.list_file.name}

    def _record(self, image_id: str) -> dict[str, Any]:
        try:
            return self._image_of[image_id]
        except KeyError:
            raise BoxSupError(f"{self.list_file}: no image with file stem {image_id!r}") from None

    def _objects(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return self.coco.imgToAnns.get(record["id"], [])

    def image_path(self, image_id: str) -> Path:
        return self.images_dir / self._record(image_id)["file_name"]

    def mask_location(self, image_id: str) -> str:
        """Masks are painted from the objects of the annotations file: it, and the image's id in it."""
        return f"{self.list_file} (image id {self._record(image_id)['id']})"

    def _checked_size(self, image_id: str) -> tuple[int, int]:
        """The JSON's (width, height) of the image, refused when the upright image's differs."""
        record = self._record(image_id)
        width, height = record["width"], record["height"]
        real = self.image_size(image_id)
        if real != (width, height):
            raise SizeMismatchError(f"{self.image_path(image_id)}: image is {size_text(*real)} but {self.list_file} "
                                    f"says {size_text(width, height)} (image id {record['id']})")
        return width, height

    def annotation(self, image_id: str) -> ImageAnnotation:
        """The image's size and boxes; a size that differs from the real image's is refused."""
        width, height = self._checked_size(image_id)
        record = self._record(image_id)
        boxes: list[Box] = []
        skips: list[tuple[str, str]] = []
        dropped: list[str] = []
        objects = self._objects(record)
        for ann in objects:
            name, label = self._category[ann["category_id"]]
            where = f"{self.list_file} annotation id {ann['id']}"
            if not label:  # a class the run does not know, or mapped to background/null by class_map
                dropped.append(name)
                continue
            if _is_crowd(ann):
                skips.append(("crowd region", where))
                continue
            if 0 in ann["bbox"][2:]:  # w or h of 0: a line, not an object
                skips.append((ZERO_WIDTH_BOX, where))
                continue
            raw = coco_box(ann["bbox"])
            x0, y0, x1, y1 = max(0, raw[0]), max(0, raw[1]), min(width, raw[2]), min(height, raw[3])
            if (x0, y0, x1, y1) != raw:
                skips.append(("box clipped to the image", where))
            if x1 <= x0 or y1 <= y0:
                skips.append(("box of zero area or outside the image", where))
                continue
            boxes.append(Box(x0, y0, x1, y1, label))
        if self.reports_skips_of(image_id):  # counted only once the whole annotation is known to be good
            for reason, where in skips:
                self.skips.add(reason, where, quiet=True)  # COCO-scale sets have many: the counts tell
            for name in dropped:
                self.mapping.count_dropped(name)
        return ImageAnnotation(image_id, width, height, boxes, has_mask=self._has_mask(objects))

    def _has_mask(self, objects: list[dict[str, Any]]) -> bool:
        """Whether an image with these objects has a mask: when one of them has a segmentation; in a
        validation set (``scored``) also when it has no object at all, all background then (a score
        counts every image of the file, as torchvision's COCO evaluation does)."""
        return any(_has_segmentation(ann) for ann in objects) or (self.scored and not objects)

    def mask(self, image_id: str) -> np.ndarray | None:
        """The label map painted from the objects' polygons/RLE, or None when the image has none (``_has_mask``)."""
        record = self._record(image_id)
        objects = self._objects(record)
        if not self._has_mask(objects):
            return None
        width, height = self._checked_size(image_id)
        mask = np.zeros((height, width), np.uint8)
        painted: list[tuple[int, np.ndarray, int]] = []  # (pixel count, object pixels, label) of non-crowd objects
        for ann in objects:
            value = self._paint[ann["category_id"]]
            if not _has_segmentation(ann):
                if value != BACKGROUND:  # an object whose outline is unknown: its box is void
                    x0, y0, x1, y1 = coco_box(ann["bbox"])
                    mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = IGNORE
                continue
            if _is_crowd(ann):
                if value != BACKGROUND:
                    mask[self._pixels(ann, height, width)] = IGNORE
                continue
            pixels = self._pixels(ann, height, width)
            painted.append((int(pixels.sum()), pixels, value))
        painted.sort(key=lambda item: -item[0])  # stable: equal sizes keep the file's order
        for _, pixels, label in painted:
            mask[pixels] = label
        return mask

    def _pixels(self, ann: dict[str, Any], height: int, width: int) -> np.ndarray:
        """The object's pixels (H x W bool) from its polygons or RLE; an undecodable one is one line naming the file."""
        try:
            pixels = self.coco.annToMask(ann)
        except Exception as exc:  # pycocotools raises bare Exception, TypeError, ValueError ... for malformed input
            raise BoxSupError(f"{self.list_file}: annotation id {ann['id']}: cannot decode its segmentation "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
        if pixels.shape != (height, width):
            raise BoxSupError(f"{self.list_file}: annotation id {ann['id']}: segmentation is "
                              f"{size_text(pixels.shape[1], pixels.shape[0])} but its image is {size_text(width, height)}")
        return pixels.astype(bool)


def read_coco_json(path: Path) -> dict[str, Any]:
    """A COCO instances file, checked (``check_coco_entries``); every problem one line naming the file."""
    if not path.is_file():
        raise BoxSupError(f"{path}: COCO annotations file not found")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BoxSupError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BoxSupError(f"{path}: top level must be a JSON object with {', '.join(TOP_LEVEL_KEYS)}")
    for key in TOP_LEVEL_KEYS:
        if key not in data:
            raise BoxSupError(f"{path}: missing top-level key {key!r} (a COCO instances file has "
                              f"{', '.join(TOP_LEVEL_KEYS)})")
        if not isinstance(data[key], list):
            raise BoxSupError(f"{path}: top-level key {key!r} must be a list, got {type(data[key]).__name__}")
    check_coco_entries(path, data)
    return data


def check_coco_entries(path: Path, data: dict[str, Any]) -> None:
    """Refuse, in one line naming the file, an entry without its fields or one that refers to nothing."""

    def fields_of(kind: str, entries: list[Any], needed: tuple[str, ...]) -> set[Any]:
        ids: set[Any] = set()
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise BoxSupError(f"{path}: {kind}[{k}] is not an object")
            for key in needed:
                if key not in entry:
                    raise BoxSupError(f"{path}: {kind}[{k}] lacks field {key!r} (needs {', '.join(needed)})")
            if entry["id"] in ids:
                raise BoxSupError(f"{path}: {kind}[{k}] has id {entry['id']!r}, which an earlier entry already uses")
            ids.add(entry["id"])
        return ids

    image_ids = fields_of("images", data["images"], IMAGE_FIELDS)
    category_ids = fields_of("categories", data["categories"], CATEGORY_FIELDS)
    fields_of("annotations", data["annotations"], ANNOTATION_FIELDS)
    for image in data["images"]:
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise BoxSupError(f"{path}: image id {image['id']!r} has file_name {image['file_name']!r}, not a file name")
        if not all(isinstance(image[k], int) and not isinstance(image[k], bool) and image[k] > 0
                   for k in ("width", "height")):
            raise BoxSupError(f"{path}: image id {image['id']!r} has width/height {image['width']!r}/"
                              f"{image['height']!r}, not positive integers")
    for cat in data["categories"]:
        if not isinstance(cat["name"], str):
            raise BoxSupError(f"{path}: category id {cat['id']!r} has name {cat['name']!r}, not a string")
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann['id']!r}"
        if ann["category_id"] not in category_ids:
            raise BoxSupError(f"{where} has unknown category id {ann['category_id']!r} (not in categories)")
        if ann["image_id"] not in image_ids:
            raise BoxSupError(f"{where} refers to image id {ann['image_id']!r}, which is not in images")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise BoxSupError(f"{where} has bbox {bbox!r}, not [x, y, width, height] numbers")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise BoxSupError(f"{where} has iscrowd {ann['iscrowd']!r}, not 0 or 1")
        segmentation = ann.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, (list, dict)):
            raise BoxSupError(f"{where} has a segmentation that is neither a polygon list nor an RLE")


def coco_category_names(path: str | Path) -> tuple[str, ...]:
    """The category names a COCO instances file declares, in category id order (its label order)."""
    categories = read_coco_json(Path(path))["categories"]
    return tuple(cat["name"] for cat in sorted(categories, key=lambda cat: cat["id"]))
