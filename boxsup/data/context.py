"""PASCAL-CONTEXT reader, 59 classes + background, in the form mmsegmentation's converter writes.

Root: the VOC 2010 folder. ``JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png`` (8-bit
class ids: 0 background, 1..59 in ``CONTEXT_CLASSES`` order), lists
``ImageSets/SegmentationContext/<split>.txt``. The raw ``trainval/<id>.mat`` LabelMap form (459
classes) is not read: convert it with mmsegmentation's ``pascal_context.py`` first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boxsup.data.annotations import BACKGROUND, IGNORE, Box, ImageAnnotation
from boxsup.data.classes import ClassMapping
from boxsup.data.dataset import ListedDataset
from boxsup.data.images import SkipCounts, open_picture
from boxsup.data.mask_boxes import boxes_from_class_mask
from boxsup.errors import BoxSupError

CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

# Context's name for a VOC class, used when the run has the VOC name and not the Context one.
CONTEXT_TO_VOC_NAMES = {"table": "diningtable"}

CONTEXT_MASK_DIR = "SegmentationClassContext"
CONTEXT_LIST_DIR = Path("ImageSets") / "SegmentationContext"


def context_aliases(run_classes: tuple[str, ...]) -> dict[str, str]:
    """Context -> VOC names (``table`` -> ``diningtable``) for a run with the VOC name but not Context's."""
    return {ctx: voc for ctx, voc in CONTEXT_TO_VOC_NAMES.items() if voc in run_classes and ctx not in run_classes}


class ContextDataset(ListedDataset):
    """One split of PASCAL-CONTEXT (59 classes), mapped onto the run's classes by name.

    A Context class maps to, in order: ``class_map``'s entry (a run class, ``background``, or null),
    the run class of the same name (``table`` is VOC's ``diningtable`` in a VOC run), else
    background. So a run with the 59 Context classes reads them unchanged; a VOC run gets the 20
    shared classes and every other Context class as background (VOC's own convention: what is not
    one of its classes is background). Pixels of a class mapped to null become 255 (void). Boxes:
    one per 8-connected region of each Context class (Context has no box files), regions under
    ``min_box_pixels`` skipped; regions of classes that are not run classes give no box and are
    counted per class in ``mapping.dropped`` (not in ``skips``: in a VOC run they are expected).
    Mask value 255 is void; any other value over 59 is an error naming the file.
    """

    def __init__(self, root: str | Path, classes: tuple[str, ...] | list[str] = CONTEXT_CLASSES,
                 split: str | None = "train", list_file: str | Path | None = None, name: str | None = None,
                 class_map: dict[str, str | None] | None = None, min_box_pixels: int = 1):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.skips = SkipCounts()
        self.name = name or "context"
        self.min_box_pixels = int(min_box_pixels)
        where = f"source {self.name!r} class_map"
        unknown = sorted(set(class_map or {}) - set(CONTEXT_CLASSES))
        if unknown:
            raise BoxSupError(f"{where}: {unknown[0]!r} is not a PASCAL-CONTEXT class (known: {', '.join(CONTEXT_CLASSES)})")
        self.mapping = ClassMapping(self.classes, class_map, aliases=context_aliases(self.classes), where=where)
        # source class id (0..59) -> run class id; classes the run does not know are background, null is void
        self.source_to_run = [BACKGROUND]
        for ctx_name in CONTEXT_CLASSES:
            run_id = self.mapping.id_of(ctx_name)
            if run_id is None:
                run_id = IGNORE if ctx_name in self.mapping.class_map else BACKGROUND
            self.source_to_run.append(run_id)
        if not any(0 < r < IGNORE for r in self.source_to_run):
            raise BoxSupError(f"{where}: none of PASCAL-CONTEXT's 59 classes is a class of this run "
                              f"({', '.join(self.classes)}); map them with class_map")
        self.lookup = np.full(256, IGNORE, dtype=np.uint8)
        self.lookup[: len(self.source_to_run)] = self.source_to_run
        self.read_ids(split, list_file, self._split_list)

    def _split_list(self, name: str) -> Path:
        path = self.root / CONTEXT_LIST_DIR / f"{name}.txt"
        if not path.is_file():
            raise BoxSupError(f"{path}: split list not found (is the root VOC2010 converted by "
                              "mmsegmentation's pascal_context.py?)")
        return path

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / CONTEXT_MASK_DIR / f"{image_id}.png"

    def mask_location(self, image_id: str) -> str:
        return str(self.mask_path(image_id))

    def source_mask(self, image_id: str) -> np.ndarray:
        """The PNG as Context class ids (0..59, 255 void), checked against the image's size."""
        path = self.mask_path(image_id)
        with open_picture(path, "mask") as im:
            if im.mode not in ("P", "L"):
                raise BoxSupError(f"{path}: mask must be an 8-bit greyscale or palette PNG of class ids, got mode {im.mode}")
            self.check_mask_size(image_id, path, im.size)
            mask = np.asarray(im).astype(np.uint8)
        bad = np.setdiff1d(np.unique(mask), [*range(len(CONTEXT_CLASSES) + 1), IGNORE])
        if bad.size:
            raise BoxSupError(f"{path}: mask holds class ids {bad.tolist()} beyond the {len(CONTEXT_CLASSES)} Context classes")
        return mask

    def mask(self, image_id: str) -> np.ndarray:
        """The mask in run class ids (see the class docstring for the mapping)."""
        return self.lookup[self.source_mask(image_id)]

    def annotation(self, image_id: str) -> ImageAnnotation:
        """Size and boxes (8-connected regions of each Context class) in run class ids."""
        source = self.source_mask(image_id)
        height, width = source.shape
        boxes = []
        counted = self.reports_skips_of(image_id)  # once per image, however many callers read it
        for box in boxes_from_class_mask(source, min_pixels=self.min_box_pixels):
            run_id = self.source_to_run[box.label]
            if 0 < run_id < IGNORE:
                boxes.append(Box(box.x0, box.y0, box.x1, box.y1, run_id))
            elif counted:  # expected by design (sky, wall... in a VOC run): counted per class, not a skip to warn about
                self.mapping.count_dropped(CONTEXT_CLASSES[box.label - 1])
        return ImageAnnotation(image_id, width, height, boxes, has_mask=True)
