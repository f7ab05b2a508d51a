"""``data.sources`` and ``data.val``: which readers a run's data comes from, made in one place.

A run trains on the union of its sources, each with its own format, supervision and class mapping,
and scores on one validation source. ``data.root`` is the one-source shorthand: a VOC-layout root
with ``data.train_split``/``data.val_split`` and ``data.supervision``. ``resolve_classes`` gives the
run's class names (``data.classes``); ``build_datasets`` turns the config into the two datasets;
``training_annotations`` reads the training set's annotations and sets each image's supervision by
its source's rule. Every function here takes the config's (already loaded) mapping, never a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from boxsup.data.annotations import ImageAnnotation
from boxsup.data.classes import read_class_file
from boxsup.data.dataset import PrefixedDataset, SegmentationDataset, UnionDataset
from boxsup.data.supervision import apply_supervision, audit_images, images_with_masks
from boxsup.errors import BoxSupError

log = logging.getLogger(__name__)

FORMATS = ("voc", "voc_aug", "sbd", "coco", "context")
SUPERVISIONS = ("mask", "box", "semi")
VOC_LIKE = ("voc", "voc_aug", "sbd", "context")  # take `split` or `list`


@dataclass(frozen=True)
class SourceSpec:
    """One entry of ``data.sources`` (or ``data.val``), checked. Paths as given; relative ones are to ``root``
    (``list``, ``annotations``, ``images``) or to the working directory (``root``)."""

    name: str
    format: str
    root: str
    supervision: str = "box"
    split: str | None = None  # voc-like formats: a list name (ImageSets/.../<split>.txt, or <root>/<split>.txt for sbd)
    list: str | None = None  # voc-like formats: a file of ids instead of a split name
    annotations: str | None = None  # coco: the instances JSON
    images: str | None = None  # coco: the image folder
    mask_fraction: float = 0.1  # semi: share of this source's images that keep their masks
    mask_list: str | None = None  # semi: file of ids that keep their masks
    class_map: dict[str, str | None] = field(default_factory=dict)  # source class name -> run class, background or null
    prefix: str = ""  # put before every id of this source (ids must be unique across sources)

    def path(self, value: str) -> Path:
        """``value`` relative to the source's root unless absolute."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.root) / p

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _problem(where: str, key: str, text: str) -> BoxSupError:
    return BoxSupError(f"config key {where}.{key}: {text}")


def parse_source(raw: Any, where: str, default_supervision: str = "box") -> SourceSpec:
    """A checked ``SourceSpec`` from one mapping of the config; every mistake is one line naming the key."""
    if not isinstance(raw, dict):
        raise BoxSupError(f"config key {where}: expected a mapping with name, format, root, supervision, got {raw!r}")
    known = {f.name for f in fields(SourceSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _problem(where, unknown[0], f"unknown key (known: {', '.join(sorted(known))})")
    for key in ("name", "format", "root"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _problem(where, key, f"required, a non-empty string, got {raw.get(key)!r}")
    if raw["format"] not in FORMATS:
        raise _problem(where, "format", f"{raw['format']!r} is not one of {', '.join(FORMATS)}")
    values = dict(raw)
    values.setdefault("supervision", default_supervision)
    if values["supervision"] not in SUPERVISIONS:
        raise _problem(where, "supervision", f"{values['supervision']!r} is not one of {', '.join(SUPERVISIONS)}")
    for key in ("split", "list", "annotations", "images", "mask_list", "prefix"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise _problem(where, key, f"expected a string, got {values[key]!r}")
    fraction = values.get("mask_fraction", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise _problem(where, "mask_fraction", f"must lie in [0, 1], got {fraction!r}")
    values["mask_fraction"] = float(fraction)
    class_map = values.get("class_map") or {}
    if not isinstance(class_map, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                  for k, v in class_map.items()):
        raise _problem(where, "class_map", f"expected a mapping of class name -> run class name or null, got {class_map!r}")
    values["class_map"] = dict(class_map)
    fmt = values["format"]
    if fmt == "coco":
        for key in ("annotations", "images"):
            if not values.get(key):
                raise _problem(where, key, "required for format coco")
        for key in ("split", "list"):
            if values.get(key):
                raise _problem(where, key, "not used by format coco (its images are those of the annotations file)")
    else:
        if bool(values.get("split")) == bool(values.get("list")):
            raise _problem(where, "split", f"format {fmt} takes exactly one of split (a list name) and list (a file of ids)")
        for key in ("annotations", "images"):
            if values.get(key):
                raise _problem(where, key, f"only format coco takes {key}")
    return SourceSpec(**values)


def source_specs(data: dict[str, Any]) -> tuple[list[SourceSpec], SourceSpec]:
    """The training sources and the validation source of a config's ``data`` section (shorthand expanded)."""
    if data.get("sources") is None:
        root = data["root"]
        name = Path(root).name or "data"
        train = SourceSpec(name, "voc", root, data["supervision"], split=data["train_split"],
                           mask_fraction=data["mask_fraction"], mask_list=data["mask_list"])
        val = SourceSpec(name, "voc", root, "mask", split=data["val_split"])
        return [train], val
    raw = data["sources"]
    if not isinstance(raw, list) or not raw:
        raise BoxSupError(f"config key data.sources: expected a non-empty list of source mappings, got {raw!r}")
    specs = [parse_source(entry, f"data.sources[{i}]") for i, entry in enumerate(raw)]
    names = [s.name for s in specs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise BoxSupError(f"config key data.sources: two sources are named {twice!r}")
    if data.get("val") is None:
        raise BoxSupError("config key data.val: not set (with data.sources, name the validation source: "
                          "a mapping with name, format, root and split)")
    return specs, parse_source(data["val"], "data.val", default_supervision="mask")


def resolve_classes(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The class names of ``data.classes``: 'auto', 'voc', a list, or a file (relative paths: to data.root,
    or with data.sources to the first source's root).

    'auto' reads ``<data.root>/classes.txt`` (one name per line, in label-id order) when the dataset
    has one; else, when the first source is COCO, the categories its JSON declares (in id order);
    else the 20 PASCAL VOC classes.
    """
    from boxsup.data.voc import VOC_CLASSES

    spec = cfg["data"]["classes"]
    if isinstance(spec, list):
        return tuple(spec)
    root = Path(class_root(cfg))
    if spec == "auto":
        if (root / "classes.txt").is_file():
            spec = "classes.txt"
        elif (coco_file := first_coco_annotations(cfg)) is not None:
            from boxsup.data.coco import coco_category_names

            return coco_category_names(coco_file)
        else:
            spec = "voc"
    if spec == "voc":
        return VOC_CLASSES
    path = Path(spec)
    if not path.is_absolute() and not path.is_file():
        path = root / spec
    if not path.is_file():
        raise BoxSupError(f"config key data.classes: {spec!r} is neither 'auto', 'voc' nor an existing file")
    return read_class_file(path)


def first_coco_annotations(cfg: dict[str, Any]) -> Path | None:
    """The annotations file of the first training source when it is a COCO one, else None."""
    sources = cfg["data"].get("sources")
    if not sources or not isinstance(sources[0], dict) or sources[0].get("format") != "coco":
        return None
    spec = parse_source(sources[0], "data.sources[0]")
    assert spec.annotations is not None  # parse_source requires it of format coco
    return spec.path(spec.annotations)


def class_root(cfg: dict[str, Any]) -> str:
    """Where ``data.classes: auto`` looks for classes.txt: data.root, or the first source's root."""
    data = cfg["data"]
    if data.get("sources"):
        first = data["sources"][0]
        return first.get("root", ".") if isinstance(first, dict) else "."
    return data["root"]


def _open_voc(spec: SourceSpec, classes: tuple[str, ...]) -> SegmentationDataset:
    from boxsup.data.voc import VOCDataset

    mask_dir = "SegmentationClassAug" if spec.format == "voc_aug" else "SegmentationClass"
    return VOCDataset(spec.root, spec.split, classes, list_file=spec.path(spec.list) if spec.list else None,
                      mask_dir=mask_dir, name=spec.name, class_map=spec.class_map)


def _open_coco(spec: SourceSpec, classes: tuple[str, ...]) -> SegmentationDataset:
    from boxsup.data.coco import CocoDataset

    assert spec.annotations is not None and spec.images is not None  # parse_source requires both of coco
    return CocoDataset(spec.path(spec.annotations), spec.path(spec.images), classes, name=spec.name,
                       class_map=spec.class_map)


def _open_sbd(spec: SourceSpec, classes: tuple[str, ...]) -> SegmentationDataset:
    from boxsup.data.sbd import SBDDataset

    return SBDDataset(spec.root, classes, split=spec.split, list_file=spec.path(spec.list) if spec.list else None,
                      name=spec.name, class_map=spec.class_map)


def _open_context(spec: SourceSpec, classes: tuple[str, ...]) -> SegmentationDataset:
    from boxsup.data.context import ContextDataset

    return ContextDataset(spec.root, classes, split=spec.split, list_file=spec.path(spec.list) if spec.list else None,
                          name=spec.name, class_map=spec.class_map)


READERS: dict[str, Callable[[SourceSpec, tuple[str, ...]], SegmentationDataset]] = {
    "voc": _open_voc, "voc_aug": _open_voc, "sbd": _open_sbd, "coco": _open_coco, "context": _open_context,
}  # fmt: skip


def open_source(spec: SourceSpec, classes: tuple[str, ...], scored: bool = False) -> SegmentationDataset:
    """The reader of one source, its ids prefixed when the source says so; ``scored``: a validation
    source, each of whose images must have a mask (``SegmentationDataset.scored``)."""
    if not Path(spec.root).is_dir():
        raise BoxSupError(f"{spec.root}: root of source {spec.name!r} is not a directory")
    dataset = READERS[spec.format](spec, classes)
    dataset.scored = scored
    return PrefixedDataset(dataset, spec.prefix) if spec.prefix else dataset


def build_datasets(cfg: dict[str, Any], classes: tuple[str, ...] | None = None) -> tuple[UnionDataset, SegmentationDataset]:
    """The run's training set (the union of ``data.sources``) and its validation set (``data.val``)."""
    classes = classes or resolve_classes(cfg)
    train_specs, val_spec = source_specs(cfg["data"])
    train = UnionDataset([open_source(spec, classes) for spec in train_specs])
    return train, open_source(val_spec, classes, scored=True)


def build_training_set(cfg: dict[str, Any], classes: tuple[str, ...] | None = None) -> UnionDataset:
    """The run's training set alone (what the label-update actors and the proposal builder read)."""
    classes = classes or resolve_classes(cfg)
    return UnionDataset([open_source(spec, classes) for spec in source_specs(cfg["data"])[0]])


def training_annotations(cfg: dict[str, Any], train: UnionDataset) -> list[ImageAnnotation]:
    """Annotations of the training set with each image's supervision set by its source's rule.

    An image that cannot be used (unreadable, unknown class, its size not its annotation's or its
    mask's) is left out, counted and logged; when none is left the run stops. ``data.audit_*``
    picks masked images whose masks only score the label updates.
    """
    specs = source_specs(cfg["data"])[0]
    annotations, masked = [], set()
    for spec, source in zip(specs, train.sources):
        anns = source.load_annotations(skip_bad=True)
        if not anns:
            raise BoxSupError(f"{source.list_file}: none of the {len(source.ids)} images of source {spec.name!r} "
                              "can be used (see the warnings above)")
        mask_list = str(spec.path(spec.mask_list)) if spec.mask_list and cfg["data"].get("sources") else spec.mask_list
        masked |= images_with_masks(source.ids, spec.supervision, cfg["seed"], spec.mask_fraction, mask_list)
        annotations += anns
    d = cfg["data"]
    if d["audit_list"] or d["audit_fraction"]:
        audit = audit_images([a.image_id for a in annotations if a.has_mask], cfg["seed"], d["audit_fraction"],
                             d["audit_list"], train.ids)
        masked -= audit
        log.info("%d audit images: their masks score the label updates (pseudo_miou) and never train", len(audit))
    missing = apply_supervision(annotations, masked)
    if missing:
        log.warning("%d images asked to train on their masks have none and fall back to their boxes, e.g. %s",
                    len(missing), missing[0])
    return annotations
