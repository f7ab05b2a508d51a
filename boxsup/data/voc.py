"""PASCAL VOC reader and writer: JPEGImages/, Annotations/*.xml, SegmentationClass/*.png, ImageSets/.

The reader is the only way data enters the platform; the demo set is written in this layout and
read back by the same code. Class names map to ids 1..C in the order of the class list (0 is
background, 255 is void).
"""

from __future__ import annotations

import functools
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from boxsup.data.annotations import Box, ImageAnnotation
from boxsup.errors import BoxSupError
from boxsup.utils.files import atomic_path, write_text_atomic

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


@dataclass
class SkipCounts:
    """Counted, logged skips of boxes or images that a user should know about."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        log.warning("skipped %s: %s", where, reason)


class VOCDataset:
    """Read one split of a dataset in the VOC layout.

    ``annotation(id)`` parses the XML (boxes clipped to the image; boxes of zero area after
    clipping are skipped and counted); ``image(id)`` decodes the JPEG as RGB uint8;
    ``mask(id)`` reads the palette PNG as class ids, or ``None`` when the image has no mask.
    """

    def __init__(self, root: str | Path, split: str, classes: tuple[str, ...] | list[str] = VOC_CLASSES):
        self.root = Path(root)
        self.split = split
        self.classes = tuple(classes)
        self.class_to_id = {name: i + 1 for i, name in enumerate(self.classes)}
        self.skips = SkipCounts()
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise BoxSupError(f"{list_file}: split list not found (is data.root a VOC-layout dataset?)")
        self.ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise BoxSupError(f"{list_file}: split list is empty")

    @property
    def num_classes(self) -> int:
        """Number of labels including background."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def image(self, image_id: str) -> np.ndarray:
        path = self.image_path(image_id)
        if not path.is_file():
            raise BoxSupError(f"{path}: image file not found")
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise BoxSupError(f"{path}: cannot decode image ({exc})") from None

    def mask(self, image_id: str) -> np.ndarray | None:
        path = self.mask_path(image_id)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    raise BoxSupError(f"{path}: mask must be a palette or greyscale PNG of class ids, got mode {im.mode}")
                mask = np.asarray(im).astype(np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise BoxSupError(f"{path}: cannot decode mask ({exc})") from None
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes), 255])
        if bad.size:
            raise BoxSupError(f"{path}: mask holds class ids {bad.tolist()} beyond the {len(self.classes)} classes")
        return mask

    def annotation(self, image_id: str) -> ImageAnnotation:
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
        boxes = []
        for k, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in self.class_to_id:
                raise BoxSupError(f"{path}: unknown class {name!r} (known: {', '.join(self.classes)})")
            try:
                xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{t}", "")) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise BoxSupError(f"{path}: object {k} ({name}) has a missing or non-numeric <bndbox>") from None
            # VOC boxes are 1-based and inclusive; ours are 0-based, end-exclusive.
            x0, y0 = max(0, int(round(xmin)) - 1), max(0, int(round(ymin)) - 1)
            x1, y1 = min(width, int(round(xmax))), min(height, int(round(ymax)))
            if (x0, y0, x1, y1) != (int(round(xmin)) - 1, int(round(ymin)) - 1, int(round(xmax)), int(round(ymax))):
                self.skips.add("box clipped to the image", f"{path} object {k}")
            if x1 <= x0 or y1 <= y0:
                self.skips.add("box of zero area or outside the image", f"{path} object {k}")
                continue
            boxes.append(Box(x0, y0, x1, y1, self.class_to_id[name]))
        return ImageAnnotation(image_id, width, height, boxes, has_mask=self.mask_path(image_id).is_file())


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
