"""PASCAL VOC reader and writer: JPEGImages/, Annotations/*.xml, SegmentationClass/*.png, ImageSets/.

The demo set is written in this layout and read back by the same code. Class names map to ids 1..C in the order of the class list (0 is
background, 255 is void).
"""

from __future__ import annotations

import functools
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from boxsup.data.annotations import ZERO_WIDTH_BOX, Box, ImageAnnotation
from boxsup.data.classes import ClassMapping
from boxsup.data.dataset import ListedDataset
from boxsup.data.images import SizeMismatchError, SkipCounts, open_picture, size_text
from boxsup.errors import BoxSupError
from boxsup.utils.files import atomic_path, write_text_atomic
from boxsup.utils.lists import names_text

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


@functools.cache
def voc_palette() -> list[int]:
    """The standard VOC colour map (256 RGB triples, flattened) used by SegmentationClass PNGs."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_LIST_DIRS = ("Segmentation", "Main")  # ImageSets/<dir>/<split>.txt, tried in this order


def voc_list_file(root: Path, split: str) -> Path:
    """``ImageSets/Segmentation/<split>.txt``, else ``ImageSets/Main/<split>.txt`` (VOC 2007's boxes-only lists)."""
    for folder in VOC_LIST_DIRS:
        path = root / "ImageSets" / folder / f"{split}.txt"
        if path.is_file():
            return path
    raise BoxSupError(f"{root / 'ImageSets' / 'Segmentation' / f'{split}.txt'}: split list not found "
                      "(nor in ImageSets/Main; is the root a VOC-layout dataset?)")


class VOCDataset(ListedDataset):
    """Read one split of a dataset in the VOC layout (VOC 2012, VOC 2007, SegmentationClassAug).

    ``annotation(id)`` parses the XML (boxes clipped to the image; boxes of zero area after
    clipping, or zero width with xmin = xmax or ymin = ymax, are skipped and counted) and checks the image's and mask's real sizes against it;
    ``image(id)`` decodes the JPEG as RGB uint8; ``mask(id)`` reads the PNG in ``mask_dir`` (a
    palette PNG as VOC ships it, or SegmentationClassAug's greyscale one) as class ids, or gives
    ``None`` when the image has no mask. The ids come from ``ImageSets/{Segmentation,Main}/<split>.txt``
    or from ``list_file``. Class names in the XML map through ``class_map`` (null: dropped and
    counted); any other name the run does not know is refused (most likely a typo).
    """

    def __init__(self, root: str | Path, split: str | None = "train", classes: tuple[str, ...] | list[str] = VOC_CLASSES,
                 list_file: str | Path | None = None, mask_dir: str = "SegmentationClass", name: str | None = None,
                 class_map: dict[str, str | None] | None = None):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.mask_dir = mask_dir
        self.skips = SkipCounts()
        self.name = name or self.root.name
        self.mapping = ClassMapping(self.classes, class_map, where=f"source {self.name!r} class_map")
        self.read_ids(split, list_file, lambda name: voc_list_file(self.root, name))

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / self.mask_dir / f"{image_id}.png"

    def mask_location(self, image_id: str) -> str:
        return str(self.mask_path(image_id))

    def mask(self, image_id: str) -> np.ndarray | None:
        path = self.mask_path(image_id)
        if not path.is_file():
            return None
        with open_picture(path, "mask") as im:
            if im.mode not in ("P", "L"):
                raise BoxSupError(f"{path}: mask must be a palette or greyscale PNG of class ids, got mode {im.mode}")
            mask = np.asarray(im).astype(np.uint8)
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes), 255])
        if bad.size:
            raise BoxSupError(f"{path}: mask holds class ids {bad.tolist()} beyond the {len(self.classes)} classes")
        self.check_mask_size(image_id, path, (mask.shape[1], mask.shape[0]))
        return mask

    def annotation(self, image_id: str) -> ImageAnnotation:
        """The image's boxes and size; a size that differs from the real image's (or mask's) is refused."""
        path = self.root / "Annotations" / f"{image_id}.xml"
        if not path.is_file():
            raise BoxSupError(f"{path}: annotation file not found")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise BoxSupError(f"{path}: malformed XML ({exc})") from None
        try:
            width = int(float(root.findtext("size/width", "")))
            height = int(float(root.findtext("size/height", "")))
        except ValueError:
            raise BoxSupError(f"{path}: missing or non-numeric <size><width>/<height>") from None
        real = self.image_size(image_id)
        if real != (width, height):
            raise SizeMismatchError(f"{self.image_path(image_id)}: image is {size_text(*real)} but {path} "
                                    f"says {size_text(width, height)}")
        has_mask = self.mask_path(image_id).is_file()
        if has_mask:
            with open_picture(self.mask_path(image_id), "mask") as im:
                self.check_mask_size(image_id, self.mask_path(image_id), im.size)
        boxes, skips = self._boxes(path, root, width, height)
        if self.reports_skips_of(image_id):  # counted only once the whole annotation is known to be good
            for reason, where in skips:
                self.skips.add(reason, where, quiet=reason.startswith("class "))
        return ImageAnnotation(image_id, width, height, boxes, has_mask=has_mask)

    def _boxes(self, path: Path, root: ET.Element, width: int, height: int) -> tuple[list[Box], list[tuple[str, str]]]:
        """The XML's boxes clipped to the image, and the (reason, where) of each box clipped or dropped."""
        boxes, skips = [], []
        for k, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            label = self.mapping.id_of(name)
            if label is None and name not in self.mapping.class_map:
                raise BoxSupError(f"{path}: unknown class {name!r} (known: {names_text(self.classes)}; a dataset of "
                                  f"other classes lists them in label-id order in {self.root / 'classes.txt'} "
                                  "or data.classes)")
            if not label:  # mapped to null or to background by class_map
                skips.append((f"class {name!r} dropped by class_map", f"{path} object {k}"))
                continue
            try:
                xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{t}", "")) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise BoxSupError(f"{path}: object {k} ({name}) has a missing or non-numeric <bndbox>") from None
            # VOC boxes are 1-based and inclusive; ours are 0-based, end-exclusive.
            x0, y0 = max(0, int(round(xmin)) - 1), max(0, int(round(ymin)) - 1)
            x1, y1 = min(width, int(round(xmax))), min(height, int(round(ymax)))
            if (x0, y0, x1, y1) != (int(round(xmin)) - 1, int(round(ymin)) - 1, int(round(xmax)), int(round(ymax))):
                skips.append(("box clipped to the image", f"{path} object {k}"))
            if x1 <= x0 or y1 <= y0:
                skips.append(("box of zero area or outside the image", f"{path} object {k}"))
                continue
            if x1 - x0 == 1 or y1 - y0 == 1:  # xmin = xmax or ymin = ymax: a line, not an object
                skips.append((ZERO_WIDTH_BOX, f"{path} object {k}"))
                continue
            boxes.append(Box(x0, y0, x1, y1, label))
        return boxes, skips


def write_voc_sample(
    root: str | Path,
    image_id: str,
    image: np.ndarray,
    boxes: list[Box],
    classes: tuple[str, ...] | list[str],
    mask: np.ndarray | None = None,
) -> None:
    """Write one image, its XML and (optionally) its palette mask in the VOC layout, atomically."""
    root = Path(root)
    h, w = image.shape[:2]
    with atomic_path(root / "JPEGImages" / f"{image_id}.jpg") as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=92)
    if mask is not None:
        png = Image.fromarray(mask.astype(np.uint8), mode="P")
        png.putpalette(voc_palette())
        with atomic_path(root / "SegmentationClass" / f"{image_id}.png") as tmp:
            png.save(tmp, format="PNG")
    objects = "".join(
        f"<object><name>{classes[b.label - 1]}</name><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b.x0 + 1}</xmin><ymin>{b.y0 + 1}</ymin><xmax>{b.x1}</xmax><ymax>{b.y1}</ymax></bndbox></object>"
        for b in boxes
    )
    xml = (
        f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        f"<segmented>{int(mask is not None)}</segmented>{objects}</annotation>\n"
    )
    write_text_atomic(root / "Annotations" / f"{image_id}.xml", xml)


def write_split(root: str | Path, split: str, ids: list[str]) -> None:
    """Write ImageSets/Segmentation/<split>.txt atomically."""
    write_text_atomic(Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
