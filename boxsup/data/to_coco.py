"""Write a VOC-layout dataset (such as the demo set) as COCO instances JSON, so the COCO reader can be run on it.

``<out>/annotations/instances_<split>.json`` and ``<out>/<split>/<id>.jpg`` (hard links to the VOC
JPEGs where the file system allows, else byte copies: the pixels are the same). One COCO object per
VOC box, its ``bbox`` the box as the VOC reader gives it, so reading the copy back gives the same
0-based boxes; categories 1..C in the class order; ``segmentation`` the RLE of the object's pixels
(its class inside its box) where the image has a mask, else an empty list. A mask's void pixels
become one crowd region (``iscrowd=1``, never a box, void again when read back).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from boxsup.data.annotations import BACKGROUND, IGNORE, ImageAnnotation
from boxsup.data.classes import read_class_file
from boxsup.data.voc import VOC_CLASSES, VOCDataset
from boxsup.utils.files import atomic_path, write_text_atomic

log = logging.getLogger(__name__)


def _dataset_classes(voc_root: Path) -> tuple[str, ...]:
    """``<root>/classes.txt`` when the dataset has one (the demo sets do), else the 20 VOC classes."""
    path = voc_root / "classes.txt"
    return read_class_file(path) if path.is_file() else VOC_CLASSES


def _link_or_copy(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target`` atomically: a hard link where possible, else a copy."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(source, tmp)


def _rle(pixels: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of an H x W bool array, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _coco_object(object_id: int, image_number: int, label: int, box: tuple[int, int, int, int], area: int,
                 segmentation: Any, crowd: bool = False) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    return {"id": object_id, "image_id": image_number, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": area, "iscrowd": int(crowd), "segmentation": segmentation}


def _objects(ann: ImageAnnotation, mask: np.ndarray | None, image_number: int, first_id: int) -> tuple[list[dict], int]:
    """The COCO objects of one VOC image, and how many of its mask's class pixels they do not carry.

    With a mask, each box's segmentation is its class's pixels inside it, and the void pixels (255)
    become one crowd region (which the COCO reader makes void again) of the class whose box holds
    most of them: COCO has no other way to say "unlabelled".
    """
    objects: list[dict] = []
    if mask is None:
        for box in ann.boxes:
            objects.append(_coco_object(first_id + len(objects), image_number, box.label,
                                        (box.x0, box.y0, box.x1, box.y1), box.area, []))
        return objects, 0
    covered = np.zeros(mask.shape, bool)
    void = mask == IGNORE
    void_in_box = []
    for box in ann.boxes:
        region = (slice(box.y0, box.y1), slice(box.x0, box.x1))
        pixels = np.zeros(mask.shape, bool)
        pixels[region] = mask[region] == box.label
        covered |= pixels
        void_in_box.append(int(np.count_nonzero(void[region])))
        objects.append(_coco_object(first_id + len(objects), image_number, box.label, (box.x0, box.y0, box.x1, box.y1),
                                    int(pixels.sum()), _rle(pixels)))
    if void.any() and ann.boxes:
        ys, xs = np.nonzero(void)
        label = ann.boxes[int(np.argmax(void_in_box))].label
        objects.append(_coco_object(first_id + len(objects), image_number, label,
                                    (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                                    int(void.sum()), _rle(void), crowd=True))
    lost = int(np.count_nonzero((mask != BACKGROUND) & ~void & ~covered))
    return objects, lost


def write_coco_copy(voc_root: str | Path, out_dir: str | Path, split_names: tuple[str, ...] | list[str] = ("train", "val"),
                    classes: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
    """Write the VOC-layout dataset at ``voc_root`` as COCO under ``out_dir``, one JSON per split; returns a summary.

    ``classes``: the dataset's class names in label order (default: its classes.txt, else VOC's);
    they are also written to ``out_dir/classes.txt``. A mask's void pixels travel as one crowd
    region per image; class pixels outside every box of their class, and the mask of an image
    without boxes, cannot travel (they read back as background, or no mask): the summary counts
    them (none on the synthetic sets). A broken VOC image or annotation stops the copy with its
    one-line error.
    """
    voc_root, out_dir = Path(voc_root), Path(out_dir)
    classes = tuple(classes) if classes is not None else _dataset_classes(voc_root)
    categories = [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(classes)]
    summary: dict[str, Any] = {"out": str(out_dir), "splits": {}}
    for split in split_names:
        dataset = VOCDataset(voc_root, split, classes)
        images: list[dict[str, Any]] = []
        objects: list[dict[str, Any]] = []
        lost, masked_without_objects, void_regions = 0, 0, 0
        for number, ann in enumerate(dataset.load_annotations(skip_bad=False), start=1):
            file_name = f"{ann.image_id}.jpg"
            _link_or_copy(dataset.image_path(ann.image_id), out_dir / split / file_name)
            images.append({"id": number, "file_name": file_name, "width": ann.width, "height": ann.height})
            mask = dataset.mask(ann.image_id) if ann.has_mask else None
            image_objects, image_lost = _objects(ann, mask, number, len(objects) + 1)
            objects += image_objects
            lost += image_lost
            masked_without_objects += int(mask is not None and not ann.boxes)
            void_regions += sum(o["iscrowd"] for o in image_objects)
        json_path = out_dir / "annotations" / f"instances_{split}.json"
        document = {"info": {"description": f"COCO copy of {voc_root} ({split})"}, "images": images,
                    "annotations": objects, "categories": categories}
        write_text_atomic(json_path, json.dumps(document, separators=(",", ":")) + "\n")
        if lost or masked_without_objects:
            log.warning("%s: %d mask pixels outside their class's boxes and the masks of %d images without boxes "
                        "are not carried into the COCO copy", json_path, lost, masked_without_objects)
        summary["splits"][split] = {"json": str(json_path), "images": len(images), "objects": len(objects) - void_regions,
                                    "void_regions": void_regions, "mask_pixels_not_carried": lost,
                                    "masked_images_without_objects": masked_without_objects}
    write_text_atomic(out_dir / "classes.txt", "\n".join(classes) + "\n")
    return summary
