"""The one dataset interface every reader implements, and the union of several sources.

A dataset is a list of image ids plus, per id: the RGB image, its annotation (size and boxes, in the
run's class ids 1..C) and its mask (class ids, 255 void) when it has one. The loop, the label-update
actors, the evaluation, the proposal builder and ``boxsup data check`` all take this interface;
``boxsup.data.sources.build_datasets`` makes it from the config in one place.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from boxsup.data.annotations import ImageAnnotation
from boxsup.data.images import SizeMismatchError, SkipCounts, picture_size, read_rgb, size_text
from boxsup.errors import BoxSupError
from boxsup.utils.lists import first_duplicate, list_ids

log = logging.getLogger(__name__)


class MissingMaskError(BoxSupError):
    """An image of a validation set has no mask to score it against."""


class SegmentationDataset(ABC):
    """One source of images with boxes and (maybe) masks, already mapped onto the run's classes.

    Subclasses set ``name``, ``classes`` (the run's, in label-id order), ``ids`` and ``list_file``
    (what the ids came from, for messages) and implement ``image_path``, ``annotation`` and ``mask``.
    ``scored``: a validation set, whose every image must have a mask (a score over fewer images
    would be a wrong result). ``reports_skips``: whether this reader counts and logs the boxes its
    annotations drop; off in processes that re-read what the driver already reported.
    """

    name: str
    classes: tuple[str, ...]
    ids: list[str]
    list_file: Path
    skips: SkipCounts
    scored: bool = False
    reports_skips: bool = True

    @property
    def num_classes(self) -> int:
        """Number of labels including background."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def image_path(self, image_id: str) -> Path:
        """Where the image's pixels are (for reading and for messages)."""

    def image(self, image_id: str) -> np.ndarray:
        """H x W x 3 uint8 RGB, upright (EXIF orientation applied; greyscale and CMYK converted)."""
        return read_rgb(self.image_path(image_id))

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(width, height) of the upright image from its header alone."""
        return picture_size(self.image_path(image_id))

    @abstractmethod
    def annotation(self, image_id: str) -> ImageAnnotation:
        """The image's size and boxes (clipped to the image, in run class ids); ``has_mask`` set."""

    @abstractmethod
    def mask(self, image_id: str) -> np.ndarray | None:
        """The GT label map in run class ids (0 background, 255 void), or None when the image has none."""

    def mask_location(self, image_id: str) -> str:
        """Where the image's mask comes from, to name it in messages: its file in the readers that have one;
        by default the image's path (a reader whose masks are painted from annotations says so itself)."""
        return str(self.image_path(image_id))

    def origin(self) -> dict[str, Any]:
        """What a proposal store made for this dataset records (``data_root``, ``split``), to refuse mixing."""
        return {"data_root": str(self.list_file.parent.resolve()), "split": self.list_file.name}

    def check_mask_size(self, image_id: str, where: Path, mask_size: tuple[int, int]) -> None:
        """Refuse a mask whose (width, height) differs from its image's."""
        real = self.image_size(image_id)
        if mask_size != real:
            raise SizeMismatchError(f"{where}: mask is {size_text(*mask_size)} but the image "
                                    f"{self.image_path(image_id)} is {size_text(*real)}")

    def checked_annotation(self, image_id: str) -> ImageAnnotation:
        """``annotation``; in a ``scored`` set an image without a mask is refused too."""
        ann = self.annotation(image_id)
        if self.scored and not ann.has_mask:
            raise self.missing_mask(image_id)
        return ann

    def missing_mask(self, image_id: str) -> MissingMaskError:
        """The one line for an image that a score needs but that has no mask."""
        return MissingMaskError(f"{self.image_path(image_id)}: validation image without a mask: a score must "
                                f"count every image (give it a mask or take it out of {self.list_file})")

    def reports_skips_of(self, image_id: str) -> bool:
        """Whether to count and log what this reading of the image's (good) annotation drops: only the
        first reading, however many callers read it, and never in a reader whose skips are silenced."""
        counted = vars(self).setdefault("_skips_counted", set())  # made on first use: readers share no __init__
        if not self.reports_skips or image_id in counted:
            return False
        counted.add(image_id)
        return True

    def silence_skips(self) -> None:
        """Leave counting and logging box skips to the driver's reader (for readers in actors and tasks)."""
        self.reports_skips = False

    def load_annotations(self, skip_bad: bool) -> list[ImageAnnotation]:
        """Every image's annotation, in id order.

        ``skip_bad``: an image whose annotation, image or mask is unreadable, names an unknown
        class or disagrees in size (or, in a ``scored`` set, has no mask) is left out, counted in
        ``skips`` and logged with its path; otherwise the first such problem raises.
        """
        annotations, left_out = [], 0
        for image_id in self.ids:
            try:
                annotations.append(self.checked_annotation(image_id))
            except BoxSupError as exc:
                if not skip_bad:
                    raise
                why = ("size mismatch" if isinstance(exc, SizeMismatchError) else
                       "no mask" if isinstance(exc, MissingMaskError) else "bad annotation, image or mask")
                self.skips.add(f"image left out: {why}", str(exc))
                left_out += 1
        if left_out:
            log.warning("%s: %d of %d images left out (see the lines above)", self.list_file, left_out, len(self.ids))
        return annotations


class UnionDataset(SegmentationDataset):
    """Several sources as one dataset: the ids of each in turn, each call answered by the source that owns the id."""

    def __init__(self, sources: list[SegmentationDataset]):
        if not sources:
            raise BoxSupError("config key data.sources: needs at least one source")
        self.sources = sources
        self.name = "+".join(s.name for s in sources)
        self.classes = sources[0].classes
        self.list_file = sources[0].list_file
        self.skips = SkipCounts()
        self._owner: dict[str, SegmentationDataset] = {}
        for source in sources:
            if source.classes != self.classes:
                raise BoxSupError(f"source {source.name!r}: its classes differ from source {sources[0].name!r}'s")
            for image_id in source.ids:
                other = self._owner.setdefault(image_id, source)
                if other is not source:
                    raise BoxSupError(f"{source.list_file}: image id {image_id!r} is also in source {other.name!r} "
                                      f"({other.list_file}); ids must be unique across data.sources "
                                      "(give one of them a `prefix`)")
        self.ids = [image_id for source in sources for image_id in source.ids]

    def source_of(self, image_id: str) -> SegmentationDataset:
        try:
            return self._owner[image_id]
        except KeyError:
            raise BoxSupError(f"image id {image_id!r} is in none of the sources {self.name}") from None

    def image_path(self, image_id: str) -> Path:
        return self.source_of(image_id).image_path(image_id)

    def image(self, image_id: str) -> np.ndarray:
        return self.source_of(image_id).image(image_id)

    def image_size(self, image_id: str) -> tuple[int, int]:
        return self.source_of(image_id).image_size(image_id)

    def annotation(self, image_id: str) -> ImageAnnotation:
        return self.source_of(image_id).annotation(image_id)

    def mask(self, image_id: str) -> np.ndarray | None:
        return self.source_of(image_id).mask(image_id)

    def mask_location(self, image_id: str) -> str:
        return self.source_of(image_id).mask_location(image_id)

    def origin(self) -> dict[str, Any]:
        if len(self.sources) == 1:
            return self.sources[0].origin()
        origins = [s.origin() for s in self.sources]
        return {"data_root": " + ".join(o["data_root"] for o in origins), "split": " + ".join(o["split"] for o in origins)}

    def load_annotations(self, skip_bad: bool) -> list[ImageAnnotation]:
        return [ann for source in self.sources for ann in source.load_annotations(skip_bad)]

    def silence_skips(self) -> None:
        for source in self.sources:
            source.silence_skips()

    @property
    def skip_counts(self) -> SkipCounts:
        """The skips of every source together."""
        total = SkipCounts()
        for source in self.sources:
            total.merge(source.skips)
        return total


def skip_summary(counts: Counter) -> str:
    """Skip counts (``SkipCounts.counts``, a build's ``skipped``) in one line, most frequent first; "none" if none."""
    return ", ".join(f"{n} x {reason}" for reason, n in counts.most_common()) or "none"


def check_unique_ids(ids: list[str], list_file: Path) -> None:
    """Refuse an empty id list or one that names an image twice."""
    if not ids:
        raise BoxSupError(f"{list_file}: split list is empty")
    twice = first_duplicate(ids)
    if twice is not None:
        raise BoxSupError(f"{list_file}: image id {twice!r} is listed twice")


class PrefixedDataset(SegmentationDataset):
    """A source whose ids carry a prefix (``data.sources[].prefix``), so that two sources' ids cannot meet."""

    def __init__(self, inner: SegmentationDataset, prefix: str):
        self.inner, self.prefix = inner, prefix
        self.name, self.classes, self.list_file, self.skips = inner.name, inner.classes, inner.list_file, inner.skips
        self.scored = inner.scored
        self.ids = [prefix + image_id for image_id in inner.ids]

    def _inner_id(self, image_id: str) -> str:
        if not image_id.startswith(self.prefix):
            raise BoxSupError(f"image id {image_id!r} lacks source {self.name!r}'s prefix {self.prefix!r}")
        return image_id[len(self.prefix):]

    def image_path(self, image_id: str) -> Path:
        return self.inner.image_path(self._inner_id(image_id))

    def image(self, image_id: str) -> np.ndarray:
        return self.inner.image(self._inner_id(image_id))

    def image_size(self, image_id: str) -> tuple[int, int]:
        return self.inner.image_size(self._inner_id(image_id))

    def annotation(self, image_id: str) -> ImageAnnotation:
        ann = self.inner.annotation(self._inner_id(image_id))
        ann.image_id = image_id
        return ann

    def mask(self, image_id: str) -> np.ndarray | None:
        return self.inner.mask(self._inner_id(image_id))

    def mask_location(self, image_id: str) -> str:
        return self.inner.mask_location(self._inner_id(image_id))

    def origin(self) -> dict[str, Any]:
        return self.inner.origin() | {"prefix": self.prefix}

    def silence_skips(self) -> None:
        self.inner.silence_skips()

    def load_annotations(self, skip_bad: bool) -> list[ImageAnnotation]:
        annotations = self.inner.load_annotations(skip_bad)
        for ann in annotations:
            ann.image_id = self.prefix + ann.image_id
        return annotations


def read_list_file(path: Path) -> list[str]:
    """Image ids of a list file, one per line (``boxsup.utils.lists.list_ids``), each listed once."""
    if not path.is_file():
        raise BoxSupError(f"{path}: split list not found")
    ids = list_ids(path)
    check_unique_ids(ids, path)
    return ids


class ListedDataset(SegmentationDataset):
    """A dataset under one ``root`` whose ids come from a named split's list, or from a given list file."""

    root: Path
    split: str

    def read_ids(self, split: str | None, list_file: str | Path | None, split_path: Callable[[str], Path]) -> None:
        """Set ``list_file``, ``split`` and ``ids``: ``list_file`` (relative to the root unless it exists as
        given) or else ``split_path(split)``, which raises a one-line error when that list is missing."""
        if list_file is not None:
            path = Path(list_file)
            self.list_file = path if path.is_absolute() or path.is_file() else self.root / path
            self.split = self.list_file.stem
        else:
            self.split = split or "train"
            self.list_file = split_path(self.split)
        self.ids = read_list_file(self.list_file)

    def origin(self) -> dict[str, str]:
        return {"data_root": str(self.root.resolve()), "split": self.split}
