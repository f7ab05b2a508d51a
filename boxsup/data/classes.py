"""Mapping a source's class names onto the run's class ids, and counting what is dropped; class list files.

A source names its classes its own way (COCO's "airplane", VOC's "aeroplane"). Each name maps to
a run class by, in order: the source's ``class_map`` (a run class name, ``background``, or null to
drop it), the built-in COCO -> VOC names when the run's classes are VOC's, and the name itself.
A name that maps to nothing is dropped: its boxes are left out and counted per class.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from boxsup.errors import BoxSupError
from boxsup.utils.lists import first_duplicate, names_text, read_user_text

log = logging.getLogger(__name__)

BACKGROUND_NAME = "background"

# COCO category name -> VOC class name where they differ (torchvision's references/segmentation CAT_LIST).
COCO_TO_VOC_NAMES = {
    "airplane": "aeroplane", "dining table": "diningtable", "motorcycle": "motorbike",
    "potted plant": "pottedplant", "couch": "sofa", "tv": "tvmonitor",
}  # fmt: skip


class ClassMapping:
    """Source class name -> run class id (1..C), 0 for background, or None (dropped, counted per class)."""

    def __init__(self, run_classes: tuple[str, ...], class_map: dict[str, str | None] | None = None,
                 aliases: dict[str, str] | None = None, where: str = "class_map"):
        self.run_classes = tuple(run_classes)
        self.run_ids = {name: i + 1 for i, name in enumerate(self.run_classes)}
        self.class_map = dict(class_map or {})
        self.aliases = dict(aliases or {})
        self.dropped: Counter = Counter()  # source class name -> boxes (or objects) dropped
        for source_name, target in self.class_map.items():
            if target is not None and target != BACKGROUND_NAME and target not in self.run_ids:
                raise BoxSupError(f"{where}: {source_name!r} maps to {target!r}, which is not a class of this run "
                                  f"(known: {names_text(self.run_classes)}, or background, or null to drop)")

    def target_name(self, source_name: str) -> str | None:
        """The run class name (or ``background``) a source name maps to; None when it is dropped."""
        if source_name in self.class_map:
            return self.class_map[source_name]
        name = self.aliases.get(source_name, source_name)
        return name if name in self.run_ids else None

    def id_of(self, source_name: str) -> int | None:
        """The run class id of a source class name: 1..C, 0 (background) or None (dropped)."""
        name = self.target_name(source_name)
        if name is None:
            return None
        return 0 if name == BACKGROUND_NAME else self.run_ids[name]

    def count_dropped(self, source_name: str, n: int = 1) -> None:
        if self.dropped[source_name] == 0:
            log.info("class %r is not a class of this run: its objects are dropped (counted)", source_name)
        self.dropped[source_name] += n


def coco_aliases(run_classes: tuple[str, ...]) -> dict[str, str]:
    """The built-in COCO -> VOC names when the run's classes include VOC's renamed ones, else none."""
    return {coco: voc for coco, voc in COCO_TO_VOC_NAMES.items() if voc in run_classes}


def read_class_file(path: Path) -> tuple[str, ...]:
    """The names of a class list file (one per line, in label-id order); empty or repeated names are refused."""
    names = tuple(line.strip() for line in read_user_text(path, "class list").splitlines() if line.strip())
    if not names:
        raise BoxSupError(f"{path}: class list is empty")
    twice = first_duplicate(names)
    if twice is not None:
        raise BoxSupError(f"{path}: class {twice!r} is listed twice")
    return names
