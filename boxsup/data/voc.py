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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from boxsup.data.annotations import Box, ImageAnnotation
from boxsup.errors import BoxSupError
from boxsup.utils.files import atomic_path, write_text_atomic
from boxsup.utils.lists import first_duplicate

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


class SizeMismatchError(BoxSupError):
    """An image's real size differs from its XML ``<size>`` or from its mask's size."""


@contextmanager
def _open_picture(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open`` (header only until pixels are asked for); a missing or undecodable file is one line."""
    if not path.is_file():
        raise BoxSupError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            yield im
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BoxSupError(f"{path}: cannot decode {what} ({exc})") from None


def _size_text(width: int, height: int) -> str:
    return f"{width}x{height}"


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
    clipping are skipped and counted) and checks the image's and mask's real sizes against it;
    ``load_annotations`` does so for the whole split; ``image(id)`` decodes the JPEG as RGB uint8;
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
        self.list_file = list_file
        self.ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise BoxSupError(f"{list_file}: split list is empty")
        twice = first_duplicate(self.ids)
        if twice is not None:
            raise BoxSupError(f"{list_file}: image id {twice!r} is listed twice")

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
        with _open_picture(self.image_path(image_id), "image") as im:
            return np.asarray(im.convert("RGB"))

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(width, height) of the JPEG from its header alone, without decoding the pixels."""
        with _open_picture(self.image_path(image_id), "image") as im:
            return im.size

    def mask(self, image_id: str) -> np.ndarray | None:
        path = self.mask_path(image_id)
        if not path.is_file():
            return None
        with _open_picture(path, "mask") as im:
            if im.mode not in ("P", "L"):
                raise BoxSupError(f"{path}: mask must be a palette or greyscale PNG of class ids, got mode {im.mode}")
            mask = np.asarray(im).astype(np.uint8)
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes), 255])
        if bad.size:
            raise BoxSupError(f"{path}: mask holds class ids {bad.tolist()} beyond the {len(self.classes)} classes")
        self._check_mask_size(image_id, (mask.shape[1], mask.shape[0]), self.image_size(image_id))
        return mask

    def _check_mask_size(self, image_id: str, mask_size: tuple[int, int], image_size: tuple[int, int]) -> None:
        if mask_size != image_size:
            raise SizeMismatchError(f"{self.mask_path(image_id)}: mask is {_size_text(*mask_size)} but the image "
                                    f"{self.image_path(image_id)} is {_size_text(*image_size)}")

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
            raise SizeMismatchError(f"{self.image_path(image_id)}: image is {_size_text(*real)} but {path} "
                                    f"says {_size_text(width, height)}")
        has_mask = self.mask_path(image_id).is_file()
        if has_mask:
            with _open_picture(self.mask_path(image_id), "mask") as im:
                self._check_mask_size(image_id, im.size, real)
        boxes, skips = self._boxes(path, root, width, height)
        for reason, where in skips:  # counted only once the whole annotation is known to be good
            self.skips.add(reason, where)
        return ImageAnnotation(image_id, width, height, boxes, has_mask=has_mask)

    def _boxes(self, path: Path, root: ET.Element, width: int, height: int) -> tuple[list[Box], list[tuple[str, str]]]:
        """The XML's boxes clipped to the image, and the (reason, where) of each box clipped or dropped."""
        boxes, skips = [], []
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
                skips.append(("box clipped to the image", f"{path} object {k}"))
            if x1 <= x0 or y1 <= y0:
                skips.append(("box of zero area or outside the image", f"{path} object {k}"))
                continue
            boxes.append(Box(x0, y0, x1, y1, self.class_to_id[name]))
        return boxes, skips

    def load_annotations(self, skip_bad: bool) -> list[ImageAnnotation]:
        """Every image's annotation, in split order.

        ``skip_bad``: an image whose annotation, image or mask is unreadable, names an unknown
        class or disagrees in size is left out, counted in ``skips`` and logged with its path;
        otherwise the first such problem raises.
        """
        annotations, left_out = [], 0
        for image_id in self.ids:
            try:
                annotations.append(self.annotation(image_id))
            except BoxSupError as exc:
                if not skip_bad:
                    raise
                why = "size mismatch" if isinstance(exc, SizeMismatchError) else "bad annotation, image or mask"
                self.skips.add(f"image left out: {why}", str(exc))
                left_out += 1
        if left_out:
            log.warning("%s: %d of %d images left out (see the lines above)", self.list_file, left_out, len(self.ids))
        return annotations


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
